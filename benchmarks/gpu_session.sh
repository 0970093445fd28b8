#!/bin/bash
# Every GPU benchmark, each under its own time limit, logs into $OUT.
#
#   bash benchmarks/gpu_session.sh [OUT_DIR] [PART...]
#   PART: gen pretrain pretrainx pretrains trainer sft ops sftc sftw grpo
#   (default: gen pretrain sft grpo; sftc and sftw (the compiled LoRA step), pretrainx (cuDNN
#   attention at batch 32 with a kernel profile), pretrains (issue #25's switches beside the
#   plain step) and trainer (`llmlab pretrain --preset gpt2-124m` itself, on data carried in
#   runs/gpu_data) each need a call of their own)
#
# Peers not on the GPU image travel as files beside the repo (git-ignored, carried):
#   .whl/   trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 wheels, for grpo:
#           pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl NAME==VER
#   .gw/site/bitsandbytes   bitsandbytes 0.50.2 unpacked with only its cpu + cuda130 libraries
#           (the wheel is 43 MB; those two are 4 MB), for the QLoRA peer in sft.
# Measured on an H100 (2026-11-23): gen ~4 min, pretrain ~5 min, sft ~3 min, grpo ~3 min.
# A device call runs at most 10 minutes: use two, `... $OUT gen pretrain` and `... $OUT sft grpo`.
set -u
OUT=${1:-${OUT:-/tmp/gpu_out}}
shift || true
PARTS=${*:-gen pretrain sft grpo}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || echo "wheel install failed: TRL side will be skipped"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=/tmp/site:$PWD:$PWD/.gw/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" \
  | tee -a "$OUT/env.txt"
run() {  # name, limit in seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v -i warn | tail -25
}
for p in $PARTS; do
  case $p in
    gen) run generate 300 python3 benchmarks/generate_gpu.py --triton "" kv_splits=2 kv_splits=4 \
           fuse=3 fuse=3,rows_o=32 fuse=3,rows_o=128 fuse=3,rows_mlp=8 fuse=3,rows_mlp=32 \
           fuse=3,warps=4 fuse=1 fuse=1,kv_splits=2 --profile "" fuse=3 \
           --out "$OUT/generate.json" ;;
    pretrain) run pretrain 330 python3 benchmarks/pretrain_gpu.py --steps 10 --rounds 3 --fuse-qkv \
                --pad-vocab 128 ;;
    pretrainx) run pretrain_sweep 540 python3 benchmarks/pretrain_gpu.py --steps 10 --rounds 2 \
                 --loss fused --pad-vocab 128 --sdpa cudnn --batch 32 --profile ;;
    # The speedrun switches together (Muon, QK-norm, ReLU², soft-capping, value embeddings)
    # against the plain fused-loss step, compiled, bf16: step time and MFU side by side.
    pretrains) run pretrain_switches 540 python3 benchmarks/pretrain_gpu.py --steps 10 \
                 --rounds 3 --loss fused --pad-vocab 128 --optimizer muon --qk-norm \
                 --mlp relu2 --logit-softcap 15 --value-embeds 3 ;;
    trainer) run trainer 540 bash benchmarks/gpu_trainer.sh "$OUT" ;;
    sft) run sft_peft 240 python3 benchmarks/sft_peft.py --device cuda --bf16 --batch 8 \
           --seq 1024 --steps 10 --rounds 1 --out "$OUT/sft_peft.json" ;;
    # CUDA kernels per training step, both sides (what bounds the eager step): ~1 minute.
    ops) run step_ops 180 python3 benchmarks/step_ops.py --device cuda --batch 8 --seq 1024 \
           --out "$OUT/step_ops.json" ;;
    # Compiled LoRA step, each decoder block compiled on its own (one compile for all 30),
    # both sides; a row each for eager, default and reduce-overhead (CUDA graphs). A worker
    # past 115 s (compile + 11 steps) is reported as timed out and the run goes on.
    sftc) run sft_compile 540 python3 benchmarks/sft_peft.py --device cuda --bf16 --batch 8 \
            --seq 1024 --steps 10 --rounds 1 --configs lora-r16-all --compile regional \
            --compile-mode eager,default,reduce-overhead --worker-timeout 115 \
            --out "$OUT/sft_compile.json" ;;
    # The whole model compiled (one graph; longer compile), for comparison with sftc.
    sftw) run sft_compile_whole 540 python3 benchmarks/sft_peft.py --device cuda --bf16 \
            --batch 8 --seq 1024 --steps 10 --rounds 1 --configs lora-r16-all --compile whole \
            --compile-mode default --worker-timeout 250 --out "$OUT/sft_compile_whole.json" ;;
    grpo) run grpo 280 python3 benchmarks/grpo_gpu.py --out "$OUT/grpo_gpu.json" ;;
    *) echo "unknown part $p (gen pretrain pretrainx pretrains trainer sft ops sftc sftw grpo)" ;;
  esac
done
