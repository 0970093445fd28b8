"""AdamW with weight-decay groups, and the warmup + decay learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (linear and embedding weights); leave biases and norm gains alone, as
    decaying a scale or offset toward zero only fights the normalisation."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for p in model.parameters():  # parameters() yields a tied weight once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_adamw(groups: Iterable[dict[str, Any]], lr: float, betas: tuple[float, float],
               eps: float, device: torch.device) -> torch.optim.AdamW:
    """Fused AdamW (one kernel for all parameters) where the device supports it."""
    groups = list(groups)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, ValueError):  # fused unsupported for this device or dtype
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=device.type != "cpu")


def lr_lambda(warmup: int, total: int, schedule: str, min_ratio: float) -> Callable[[int], float]:
    """Multiplier of the peak lr at `step` (0-based): linear warmup from 1/warmup to 1 over
    `warmup` steps, then cosine or linear decay to `min_ratio` at `total`."""
    if schedule not in ("cosine", "linear", "constant"):
        raise ValueError(f"schedule must be cosine, linear or constant, got {schedule!r}")

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / (total - warmup))
        if schedule == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            shape = 1.0 - progress
        return min_ratio + (1.0 - min_ratio) * shape

    return f
