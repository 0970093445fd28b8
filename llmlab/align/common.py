"""Pieces every alignment loss shares: masked reductions, per-token log-probs and the
reference model."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.peft.model import disable_adapters


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
    temperature scores tokens under the distribution they were sampled from (as TRL). The
    losses use the chunked `token_logprobs`; this plain form is what a test checks
    against TRL's `selective_log_softmax`."""
    logits = logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    return torch.gather(F.log_softmax(logits, -1), 2, input_ids[:, 1:, None]).squeeze(2)


def token_logprobs(model: nn.Module, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None, temperature: float = 1.0,
                   with_hidden: bool = False) -> Any:
    """log p(input_ids[:, t+1] | input_ids[:, :t+1]) for t < T-1: shape (B, T-1); with
    `with_hidden`, also the final hidden states (B, T, d) of the same forward (PPO's value
    head reads them).

    The model forms them in chunks (`model(ids, targets=..., reduction="none")`, the per-token
    cross-entropy): an RL batch's (B, T, vocab) logits and log-softmax, GBs for a 49k
    vocabulary, are never held."""
    targets = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], 1)  # the last one is unused
    out = model(input_ids, targets=targets, reduction="none", attention_mask=attention_mask,
                temperature=temperature)
    logp = -out.loss[:, :-1]
    return (logp, out.hidden) if with_hidden else logp


def frozen_copy(model: nn.Module) -> nn.Module:
    """A reference for full-weight training: the starting weights, which never train."""
    return copy.deepcopy(model).eval().requires_grad_(False)


class Reference:
    """π_ref, the model DPO, PPO and GRPO measure the policy against: a frozen copy of the
    starting model, or, with None, the policy itself with its adapters disabled (a LoRA
    policy starts as its base, so no second copy of the weights is needed)."""

    def __init__(self, frozen: nn.Module | None = None) -> None:
        self.frozen = frozen

    @torch.no_grad()
    def logprobs(self, ids: torch.Tensor, attn: torch.Tensor | None, temperature: float = 1.0,
                 *, policy: nn.Module) -> torch.Tensor:
        """log π_ref of each next token, as `token_logprobs` (B, T-1); `policy` is the model
        being trained (any wrapper of it: DDP, a value head), used when there is no copy."""
        if self.frozen is not None:
            return token_logprobs(self.frozen, ids, attn, temperature)
        with disable_adapters(policy):
            return token_logprobs(policy, ids, attn, temperature)
