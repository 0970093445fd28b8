"""The next-token distribution before and after the sampling processors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llmlab.generate.sampling import SamplingParams, process_logits


@dataclass
class NextToken:
    ids: list[int]
    top: list[dict]  # [{id, piece, raw_p, p}] by raw probability, the kept ones first
    kept: int  # tokens with nonzero probability after temperature/top-k/top-p/min-p
    entropy_raw: float
    entropy: float
    sampled: int | None = None


def _entropy(p: torch.Tensor) -> float:
    nz = p[p > 0]
    return float(-(nz * nz.log()).sum())


@torch.inference_mode()
def next_token(
    lm: Any, ids: list[int], params: SamplingParams, k: int = 20, seed: int | None = None
) -> NextToken:
    """One forward pass; the raw softmax and the processed one (library order: temperature,
    top-k, top-p, min-p); optionally sample a token from the processed distribution."""
    params.validate()
    if not ids:
        raise ValueError("text: the prompt tokenizes to zero tokens")
    x = torch.tensor([ids], dtype=torch.long, device=lm.model.device)
    logits = lm.model(x, last_only=True).logits[0, -1].float()
    raw = logits.softmax(-1)
    processed = process_logits(logits[None], params)[0]
    if params.greedy:
        p = torch.zeros_like(raw)
        p[int(logits.argmax())] = 1.0
    else:
        p = processed.softmax(-1)
    order = torch.argsort(raw, descending=True)[:k].tolist()
    pieces = lm.tokenizer.pieces(order)
    top = [
        {"id": i, "piece": s, "raw_p": float(raw[i]), "p": float(p[i])}
        for i, s in zip(order, pieces, strict=True)
    ]
    out = NextToken(ids, top, int((p > 0).sum()), _entropy(raw), _entropy(p))
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        out.sampled = int(torch.multinomial(p, 1, generator=g))
    return out
