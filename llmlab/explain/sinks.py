"""Attention sinks: why so much attention lands on the first token, and what is left without it.

Softmax weights must sum to one, so a head with nothing useful to read in this context still
has to put its weight somewhere. Models learn a "no-op" target: the first token, which every
query can see (in a causal model it is the only key all positions share), gets a large
score and a small value vector, so attending to it changes the residual stream very little
(Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks"). The sink share
says how idle a head is here; removing the sink and renormalising shows what the head
attends to among the real tokens.
"""

from __future__ import annotations

import torch


def sink_share(weights: torch.Tensor) -> torch.Tensor:
    """(..., Tq, Tk) -> (...): the mean weight on key 0 over queries 1.. (query 0 of a causal
    model can see only itself, so it says nothing)."""
    if weights.shape[-2] < 2:
        raise ValueError("weights: need at least 2 queries to measure a sink")
    return weights[..., 1:, 0].mean(-1)


def without_sink(weights: torch.Tensor) -> torch.Tensor:
    """Each row with key 0 removed and the rest renormalised to sum to one. A row with no
    other key (query 0 of a causal model) is left as it was."""
    rest = weights[..., 1:].sum(-1, keepdim=True)
    has_rest = rest > 0
    out = torch.where(has_rest, weights / rest.clamp_min(1e-30), weights)
    out[..., 0:1] = torch.where(has_rest, torch.zeros_like(rest), weights[..., 0:1])
    return out
