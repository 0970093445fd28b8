"""Pretraining presets and the data config: plain dataclasses and dicts, torch-free, so the
CLI can list presets and build flags without importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmlab.model.config import PRESETS as MODEL_SHAPES


@dataclass
class DataConfig:
    data: str | None = None  # a prepared dir; None: prepare `inputs` into RUN_DIR/data
    inputs: str = "kjv"  # comma-separated files/dirs or bundled corpora (kjv, pydocs)
    tokenizer: str = "bpe:4096"  # gpt2 | cl100k | smollm2 | DIR | bpe:N (trained on the input)
    val_fraction: float = 0.05  # share of the documents held out for validation


# Each preset: model shape, training settings, data. CLI flags override any field.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # ~1.4M params (a 4k BPE trained on the KJV keeps the embedding small); about 1.2M
    # tokens seen, 1.1 epochs, well below the unigram baseline on 2 CPU cores in minutes.
    "tiny-cpu": {
        "model": dict(d_model=128, n_layer=4, n_head=4, max_seq_len=128, pos="rope",
                      norm="rmsnorm", mlp="swiglu", d_ff=384, bias=False, tie_embeddings=True),
        "train": dict(max_steps=600, batch_size=16, seq_len=128, lr=3e-3, warmup_steps=50,
                      weight_decay=0.1, eval_every=150, eval_batches=16, ckpt_every=150,
                      log_every=10, sample_prompt="And it came to pass"),
        "data": dict(inputs="kjv", tokenizer="bpe:4096"),
    },
    # tiny-cpu's shape and data with the switches that reach its quality in a fraction of the
    # time (benchmarks/SPEEDRUN.md has every attempt and benchmarks/speedrun_cpu.py the
    # race): Muon for the hidden matrices (lr 0.015), an untied token embedding at a high
    # AdamW lr (0.1) and one value-embedding table, batch 8 for twice the updates per token,
    # a short warmup and a long wsd cooldown, bf16 autocast (2x matmuls on an AVX512-BF16
    # CPU). 32 eval batches of 8 are tiny-cpu's 16 of 16: the same validation windows.
    "speedrun-cpu": {
        "model": dict(d_model=128, n_layer=4, n_head=4, max_seq_len=128, pos="rope",
                      norm="rmsnorm", mlp="swiglu", d_ff=384, bias=False, tie_embeddings=False,
                      value_embeds=1),
        "train": dict(max_steps=300, batch_size=8, seq_len=128, lr=1.5e-2, warmup_steps=10,
                      weight_decay=0.1, optimizer="muon", muon_lr=0.015, embed_lr=0.1,
                      schedule="wsd", cooldown=0.5, precision="bf16", eval_every=75,
                      eval_batches=32, ckpt_every=150, log_every=10,
                      sample_prompt="And it came to pass"),
        "data": dict(inputs="kjv", tokenizer="bpe:4096"),
    },
    # A first loss line within seconds and KJV-like samples within ~3 minutes on 2 CPU
    # cores: a 1k BPE (trains in a few seconds), a small model, frequent logs and samples.
    "micro": {
        "model": dict(d_model=96, n_layer=3, n_head=4, max_seq_len=64, pos="rope",
                      norm="rmsnorm", mlp="swiglu", d_ff=256, bias=False, tie_embeddings=True),
        "train": dict(max_steps=2400, batch_size=16, seq_len=64, lr=4e-3, warmup_steps=30,
                      weight_decay=0.1, eval_every=600, eval_batches=8, ckpt_every=0,
                      log_every=5, sample_tokens=40, sample_prompt="And it came to pass",
                      tensorboard=False),
        "data": dict(inputs="kjv", tokenizer="bpe:1024"),
    },
    # The GPT-2 small shape (124M); for GPUs: 16 x 1024 x 32 accum = 0.5M tokens per step.
    "gpt2-124m": {
        "model": {**MODEL_SHAPES["gpt2"]},
        "train": dict(max_steps=5000, batch_size=16, seq_len=1024, grad_accum=32, lr=6e-4,
                      warmup_steps=700, eval_every=250, eval_batches=20, ckpt_every=500,
                      compile=True),
        "data": dict(inputs="kjv,pydocs", tokenizer="gpt2"),
    },
    "smollm2-135m": {
        "model": {**MODEL_SHAPES["smollm2-135m"], "max_seq_len": 2048},
        "train": dict(max_steps=5000, batch_size=8, seq_len=2048, grad_accum=32, lr=1e-3,
                      warmup_steps=500, eval_every=250, eval_batches=20, ckpt_every=500,
                      compile=True),
        "data": dict(inputs="kjv,pydocs", tokenizer="smollm2"),
    },
}

_FROM_TOKENIZER = ("vocab_size", "bos_token_id", "eos_token_id")


def get_preset(name: str) -> dict[str, dict[str, Any]]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return {k: dict(v) for k, v in PRESETS[name].items()}


# ----------------------------------------------------------------------------- memory
