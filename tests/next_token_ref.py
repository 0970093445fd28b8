"""The outside reference for next-token scores: transformers' own forward pass and loss on
the HF export of an llmlab model. Shared by the library test and the server's API test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def hf_export(lm: Any, out: Path) -> torch.nn.Module:
    """`lm` written with save_hf and read back by transformers, fp32, in eval mode."""
    import transformers

    from llmlab.weights.hf import save_hf

    path = save_hf(lm.model, out, lm.tokenizer)
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, local_files_only=True).eval()


PYDOCS = Path("/usr/share/doc/python3.11/html/_sources/tutorial")


def tiny_llama(out: Path) -> tuple[Any, torch.nn.Module]:
    """A tiny random Llama with a real BPE tokenizer (trained on a Python docs page), and
    transformers' load of its HF export."""
    from types import SimpleNamespace

    from llmlab.model import ModelConfig, Transformer
    from llmlab.tokenizer import train_bpe

    tok = train_bpe([(PYDOCS / "classes.rst.txt").read_text(encoding="utf-8")],
                    vocab_size=384, pattern="gpt2", progress=False)
    cfg = ModelConfig(vocab_size=384, d_model=64, n_layer=2, n_head=4, n_kv_head=2,
                      max_seq_len=128, pos="rope", norm="rmsnorm", mlp="swiglu", d_ff=128,
                      bias=False)
    torch.manual_seed(0)
    lm = SimpleNamespace(model=Transformer(cfg).eval(), tokenizer=tok)
    return lm, hf_export(lm, out)


def hf_scores(ref: torch.nn.Module, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """transformers' (T-1, vocab) next-token logits, each next token's NLL, and its own mean
    loss (`labels=ids`, which shifts inside the model)."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = ref(x).logits.float()[0, :-1]
        loss = ref(x, labels=x).loss.item()
    return logits, F.cross_entropy(logits, x[0, 1:], reduction="none"), loss
