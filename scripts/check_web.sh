#!/usr/bin/env bash
# The playground's bundle (llmlab/server/static, committed so `pip install` needs no node)
# must be the build of web/src from web/package-lock.json: build it afresh and compare.
set -euo pipefail
cd "$(dirname "$0")/../web"
npm ci --no-audit --no-fund --loglevel=error
npx tsc --noEmit
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
npx vite build --outDir "$out" --emptyOutDir --logLevel error
if ! diff -r "$out" ../llmlab/server/static; then
  echo "check_web: llmlab/server/static is not the build of web/src;" \
       "run (cd web && npm ci && npm run build) and commit the result" >&2
  exit 1
fi
echo "check_web: llmlab/server/static is the build of web/src"
