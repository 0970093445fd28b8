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


def lr_lambda(warmup: int, total: int, schedule: str, min_ratio: float,
              cooldown: float = 0.2) -> Callable[[int], float]:
    """Multiplier of the peak lr at `step` (0-based): linear warmup from 1/warmup to 1 over
    `warmup` steps, then cosine or linear decay to `min_ratio` at `total`; for wsd, 1 until
    the last `cooldown` share of the steps, then linear to `min_ratio`."""
    if schedule not in ("cosine", "linear", "constant", "wsd"):
        raise ValueError(f"schedule must be cosine, linear, constant or wsd, got {schedule!r}")
    # wsd holds the peak longer and decays late: one run can stop anywhere in the stable
    # phase, and a short cooldown from there gives the loss a decayed run would have.
    decay_from = max(warmup, total - round(cooldown * total)) if schedule == "wsd" else warmup

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or step < decay_from or total <= decay_from:
            return 1.0
        progress = min(1.0, (step - decay_from) / (total - decay_from))
        if schedule == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            shape = 1.0 - progress
        return min_ratio + (1.0 - min_ratio) * shape

    return f


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 when asked, or by default on a GPU; None: fp32 throughout (CPU by default)."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 else None


def make_optimizer(model: nn.Module, cfg: Any, device: torch.device,
                   groups: list[dict[str, Any]] | None) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` names, over `groups` (default: `param_groups`)."""
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "muon":
        if groups is not None:  # adapters, value heads...: not a pretraining model's matrices
            raise ValueError("optimizer=muon is for pretraining a whole model; this run "
                             "trains chosen parameters, use optimizer=adamw")
        from llmlab.train.muon import Muon, muon_groups

        # Newton-Schulz in the precision the model trains in: bf16 where autocast runs bf16.
        return Muon(muon_groups(model, cfg.lr, cfg.muon_lr, cfg.weight_decay, cfg.embed_lr),
                    cfg.lr, cfg.muon_momentum, betas=betas, eps=cfg.eps,
                    ns_dtype=autocast_dtype(cfg.precision, device) or torch.float32)
    if getattr(cfg, "embed_lr", 0.0):
        raise ValueError("embed_lr: only optimizer=muon trains the embedding at its own lr")
    groups = groups if groups is not None else param_groups(model, cfg.weight_decay)
    return make_adamw(groups, cfg.lr, betas, cfg.eps, device)
