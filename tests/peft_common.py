"""Shared helpers for the PEFT/SFT tests: a tiny random Llama in llmlab and exported to HF."""

from __future__ import annotations

from pathlib import Path

import torch

from llmlab.model import ModelConfig, Transformer


def tiny_cfg(tie: bool = False) -> ModelConfig:
    return ModelConfig(vocab_size=96, d_model=64, n_layer=2, n_head=4, n_kv_head=2,
                       max_seq_len=64, pos="rope", norm="rmsnorm", mlp="swiglu", d_ff=128,
                       bias=False, tie_embeddings=tie)


def tiny_model(seed: int = 0, tie: bool = False) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny_cfg(tie)).eval()


def export_hf(model: Transformer, out: Path) -> Path:
    from llmlab.weights.hf import save_hf

    return save_hf(model, out)


def randomize(pm: torch.nn.Module, seed: int = 1) -> None:
    """Non-zero B (and everything trainable) so the adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + p)
