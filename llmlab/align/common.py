"""Pieces every alignment loss shares: masked reductions and per-token log-probs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked entries, with the unbiased variance (as TRL's
    `masked_whiten`); `shift_mean=False` adds the mean back (used to whiten rewards)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask)
    if n > 1:
        var = var * n / (n - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean


def logprobs_from_logits(logits: torch.Tensor, input_ids: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    """log p(input_ids[:, t+1] | ..) from (B, T, V) logits: (B, T-1). Dividing by the sampling
    temperature scores tokens under the distribution they were sampled from (as TRL)."""
    logits = logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    return torch.gather(F.log_softmax(logits, -1), 2, input_ids[:, 1:, None]).squeeze(2)


def token_logprobs(model: nn.Module, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None,
                   temperature: float = 1.0) -> torch.Tensor:
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) for t < T-1: shape (B, T-1).

    The model forms them in chunks (`model(ids, targets=..., reduction="none")`, the per-token
    cross-entropy): an RL batch's (B, T, vocab) logits and log-softmax, GBs for a 49k
    vocabulary, are never held."""
    targets = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], 1)  # the last one is unused
    out = model(input_ids, targets=targets, reduction="none", attention_mask=attention_mask,
                temperature=temperature)
    return -out.loss[:, :-1]
