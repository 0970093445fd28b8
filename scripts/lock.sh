#!/usr/bin/env bash
# Refresh the lock (requirements/*.txt) after changing pyproject.toml's dependencies or
# requirements/*.in, then commit it:
#   bash scripts/lock.sh                              keep today's pins where they still fit
#   bash scripts/lock.sh --upgrade                    newest releases (then run the tests)
#   bash scripts/lock.sh --upgrade-package transformers
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/uv ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  if [ -f requirements/tools.txt ]; then
    .venv/bin/python -m pip install -q --require-hashes --no-deps -r requirements/tools.txt
  else
    .venv/bin/python -m pip install -q uv
  fi
fi
exec "$PY" scripts/lock.py --uv .venv/bin/uv "$@"
