#!/bin/bash
# `llmlab pretrain --preset gpt2-124m` itself on a GPU: the Trainer's CUDA path (bf16
# autocast, compile, fused AdamW, checkpoints, eval, samples), then a kill-free resume to more
# steps, then `llmlab report`. The data is prepared here and carried (runs/ is git-ignored):
#
#   llmlab data prepare --input kjv pydocs --tokenizer gpt2 --out runs/gpu_data   # 9.9 MB
#   bash benchmarks/gpu_trainer.sh OUT_DIR        (on the GPU machine; ~4 minutes)
#
# The run dir stays in /tmp (each checkpoint is ~1.5 GB); metrics, samples, the resolved
# config, the report and its plot are copied to OUT_DIR.
set -eu
OUT=${1:?usage: gpu_trainer.sh OUT_DIR}
RUN=/tmp/llmlab_gpt2_run
rm -rf "$RUN"
mkdir -p "$OUT"
python3 -c "import tiktoken" 2>/dev/null || { echo "tiktoken is missing here: carry its wheel"; exit 1; }
[ -f runs/gpu_data/manifest.json ] || { echo "runs/gpu_data missing: prepare and carry it"; exit 1; }
common=(--preset gpt2-124m --data runs/gpu_data --grad-accum 1 --warmup-steps 50 --eval-every 100
        --eval-batches 8 --ckpt-every 100 --keep-last 1 --log-every 10 --no-progress
        --out "$RUN")
python3 -m llmlab.cli pretrain "${common[@]}" --max-steps 200
python3 -m llmlab.cli pretrain "${common[@]}" --max-steps 300 --resume
python3 -m llmlab.cli report "$RUN" | tee "$OUT/trainer_report.txt"
cp "$RUN"/{metrics.jsonl,samples.jsonl,config.json,run.json} "$OUT"/ 2>/dev/null || true
cp "$RUN"/*.png "$OUT"/ 2>/dev/null || true
