"""Muon: momentum SGD whose update for each hidden weight matrix is orthogonalised.

Keller Jordan et al., "Muon: an optimizer for hidden layers in neural networks" (2024), the
optimizer of modded-nanogpt's speedrun records and of nanochat. For a weight matrix, plain
momentum's update is dominated by a few directions (a handful of large singular values);
Muon replaces the update M = U S Vᵀ by (about) U Vᵀ, so every direction moves by the same
step and the rare ones learn as fast as the common ones. Newton-Schulz iterations compute
it with matrix products only, no SVD.

Embeddings, the LM head and the 1-D gains are not "hidden matrices" (a row of an embedding
is looked up, not multiplied), so they keep AdamW, as in modded-nanogpt and nanochat. One
optimizer holds both kinds of group, so the Trainer's schedule, checkpoints and NaN guard
treat it as any other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

# modded-nanogpt's quintic: its slope at 0 is large (3.4), so small singular values grow fast
# in 5 steps; it leaves them in about [0.7, 1.2] rather than at exactly 1, which trains as well.
QUINTIC = (3.4445, -4.7750, 2.0315)
# The classic cubic x <- 1.5x - 0.5 x xᵀ x: slower, but it converges to U Vᵀ exactly.
CUBIC = (1.5, -0.5, 0.0)


def newton_schulz(g: torch.Tensor, steps: int = 5,
                  coeffs: tuple[float, float, float] = QUINTIC,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """About U Vᵀ for g = U S Vᵀ (or for each matrix of a stack g[i]), by `steps` iterations
    of x <- a x + (b A + c A²) x, A = x xᵀ. Each one maps every singular value s to
    a s + b s³ + c s⁵ and keeps the singular vectors. In bf16 (`dtype`, as modded-nanogpt
    and nanochat run it) the products are about twice as fast on a GPU or an AVX512-BF16 CPU
    and the result is as good an update: the quintic leaves the values in [0.7, 1.2] anyway."""
    x = g.to(dtype)
    wide = x.shape[-2] <= x.shape[-1]
    if not wide:  # A = x xᵀ is then the smaller of the two Gram matrices
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm = 1
    a, b, c = coeffs
    for _ in range(steps):
        A = x @ x.mT
        x = a * x + (b * A + c * A @ A) @ x
    return (x if wide else x.mT).to(g.dtype)


def muon_groups(model: nn.Module, lr: float, muon_lr: float, weight_decay: float,
                embed_lr: float = 0.0) -> list[dict[str, Any]]:
    """Four groups: Muon for the hidden matrices; AdamW (decayed) for the token embeddings at
    `embed_lr` (0: `lr`) and for the LM head at `lr`; AdamW (not decayed) for gains and
    biases, as `optim.param_groups` does."""
    embeds = {id(p) for m in model.modules() if isinstance(m, nn.Embedding)
              for p in m.parameters()}
    head = getattr(model, "lm_head", None)
    heads = {id(p) for p in head.parameters()} if head is not None else set()
    if embed_lr and embeds & heads:
        raise ValueError("embed_lr: the token embedding is tied to the LM head here, so it "
                         "can't take its own lr; pass --no-tie-embeddings (or embed_lr 0)")
    hidden, embed, outer, flat = [], [], [], []
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() < 2:
            flat.append(p)
        elif id(p) in heads:
            outer.append(p)
        elif id(p) in embeds:
            embed.append(p)
        else:
            hidden.append(p)
    return [
        {"params": hidden, "muon": True, "lr": muon_lr, "weight_decay": 0.0},
        {"params": embed, "lr": embed_lr or lr, "weight_decay": weight_decay},
        {"params": outer, "lr": lr, "weight_decay": weight_decay},
        {"params": flat, "lr": lr, "weight_decay": 0.0},
    ]


class Muon(torch.optim.Optimizer):
    """Muon for the groups marked `muon=True`, AdamW for the others."""

    def __init__(self, groups: Iterable[dict[str, Any]], lr: float, momentum: float = 0.95,
                 ns_steps: int = 5, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, ns_dtype: torch.dtype = torch.float32) -> None:
        defaults = dict(lr=lr, momentum=momentum, ns_steps=ns_steps, betas=betas, eps=eps,
                        weight_decay=0.0, muon=False)
        super().__init__(list(groups), defaults)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: ARG002 (the Optimizer signature)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["weight_decay"] and params:  # decoupled, as AdamW
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            if group["muon"]:
                self._muon(params, group)
            else:
                for p in params:
                    self._adamw(p, group)

    def _muon(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        mu = group["momentum"]
        same_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for p in params:
            state = self.state[p]
            if "momentum" not in state:
                state["momentum"] = torch.zeros_like(p)
            state["momentum"].mul_(mu).add_(p.grad)
            same_shape.setdefault(tuple(p.shape), []).append(p)
        # One Newton-Schulz on a stack of the same-shape matrices (every layer's q, k, v, o
        # ...): a few large batched products instead of many small ones, which on a CPU
        # costs a third less for the tiny-cpu model (benchmarks/SPEEDRUN.md).
        for shape, ps in same_shape.items():
            # Nesterov: look one momentum step ahead
            update = torch.stack([p.grad + mu * self.state[p]["momentum"] for p in ps])
            ortho = newton_schulz(update, group["ns_steps"], dtype=self.ns_dtype)
            # U Vᵀ has unit singular values whatever the shape; a tall matrix's update is
            # scaled up so its per-element size matches a square one's (modded-nanogpt).
            scale = max(1.0, shape[-2] / shape[-1]) ** 0.5
            for p, o in zip(ps, ortho.unbind(0), strict=True):
                p.add_(o.to(p.dtype), alpha=-group["lr"] * scale)

    def _adamw(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        (b1, b2), t = group["betas"], state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(p.grad, 1 - b1)
        v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        denom = (v / (1 - b2**t)).sqrt_().add_(group["eps"])
        p.addcdiv_(m, denom, value=-group["lr"] / (1 - b1**t))

