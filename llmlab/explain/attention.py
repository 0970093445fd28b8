"""Real attention maps: one recorded forward pass, then views of its scores.

`record_attention` (model/record.py) makes every attention layer use the written-out
softmax(QK^T/sqrt(d)) path and keep its pre-softmax scores (masked with -inf) and weights.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from llmlab.model.record import record_attention

# The shared model's `causal` flags are flipped for a bidirectional run; this lock makes
# the flip-run-restore sequence atomic with respect to other explain calls.
_CAUSAL_LOCK = threading.RLock()


@dataclass
class AttentionRun:
    """Scores and weights of every layer and head for one input."""

    ids: list[int]
    tokens: list[str]
    causal: bool
    scores: torch.Tensor  # (L, H, T, T) pre-softmax, -inf where masked
    weights: torch.Tensor  # (L, H, T, T) softmax of the scores, as the model used them

    @property
    def n_layers(self) -> int:
        return int(self.scores.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.scores.shape[1])


@contextmanager
def attention_mode(model: Any, causal: bool) -> Iterator[None]:
    """Run `model` causal or bidirectional for the duration, then restore it.

    Masking is decided by each Stack's `causal` flag (see model/transformer.py build_mask),
    so flipping it really recomputes every layer with the other mask."""
    stacks = [model.model] + ([model.encoder] if model.cfg.is_encoder_decoder else [])
    with _CAUSAL_LOCK:
        saved = [s.causal for s in stacks]
        try:
            for s in stacks:
                s.causal = causal
            yield
        finally:
            for s, c in zip(stacks, saved, strict=True):
                s.causal = c


@torch.inference_mode()
def run_attention(lm: Any, text: str, causal: bool | None = None) -> AttentionRun:
    """Tokenize `text`, run the model once recording it, keep every layer's attention.

    `causal=None` uses the model's own mask (causal for SmolLM2, bidirectional for BERT)."""
    tok = lm.tokenizer
    ids = list(tok.encode(text))
    if not ids:
        raise ValueError("text: nothing to attend over (it tokenizes to zero tokens)")
    x = torch.tensor([ids], dtype=torch.long, device=lm.model.device)
    model = lm.model
    mode = model.cfg.causal if causal is None else causal
    with attention_mode(model, mode), record_attention(model) as rec:
        if model.cfg.lm_head:
            model(x)
        else:  # encoder-only
            model.encode(x, torch.ones_like(x))
    maps = rec.attentions
    scores = torch.stack([m["scores"][0].float() for m in maps])
    weights = torch.stack([m["weights"][0].float() for m in maps])
    return AttentionRun(ids, list(tok.pieces(ids)), bool(mode), scores, weights)


def softmax_with_temperature(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(scores / T) over the keys. T=1 gives the model's own weights; T<1 sharpens,
    T>1 flattens. Masked (-inf) keys stay at exactly 0."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return (scores.double() / temperature).softmax(-1).float()


def top_keys(weights_row: torch.Tensor, k: int = 3) -> list[tuple[int, float]]:
    """The k keys a query attends to most: [(key index, weight)], largest first."""
    k = min(k, weights_row.shape[-1])
    vals, idx = torch.topk(weights_row, k)
    return [(int(i), float(v)) for v, i in zip(vals, idx, strict=True)]


def attention_operations(n_tokens: int, n_heads: int, n_layers: int) -> int:
    """Query-key dot products in one forward pass: n^2 per head per layer (no causal saving:
    the full score matrix is computed, then masked)."""
    return n_tokens * n_tokens * n_heads * n_layers


def entropy(weights: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each query's attention distribution: low = focused, high = diffuse."""
    w = weights.double().clamp_min(1e-30)
    return -(weights.double() * w.log()).sum(-1).float()
