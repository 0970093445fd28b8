"""Group Relative Policy Optimisation (Shao et al. 2024, DeepSeekMath) as TRL's GRPOTrainer.

G completions per prompt; advantage A = (r - mean_group(r)) / (std + 1e-4) where std is
    scale_rewards="group": the group's std;  "batch": the whole batch's;  "none": no division.
Per token: ρ = π/π_old, loss_t = -min(ρ·A, clip(ρ, 1-ε_low, 1+ε_high)·A) + β·k3_t, where
k3_t = π_ref/π - log(π_ref/π) - 1 (default β = 0: no reference needed). Aggregation:
    grpo:    mean over each sequence's tokens, then over sequences (length bias: Liu et al.)
    bnpo:    sum over all tokens / number of tokens in this batch
    dr_grpo: sum over all tokens / (num sequences · max_completion_length)
    dapo:    sum over all tokens / tokens in the whole generation batch (all micro-batches)
Dr. GRPO (Liu et al. 2025) is loss_type="dr_grpo" AND scale_rewards="none": both of the
paper's fixes (no length normalisation, no std normalisation). ε_high > ε_low is DAPO's
"clip-higher" (Yu et al. 2025).
"""

from __future__ import annotations

import torch

SCALES = ("group", "batch", "none")
AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group",
                     eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages (N,), per-group std (N // G,)); rewards are grouped consecutively."""
    if scale not in SCALES:
        raise ValueError(f"scale_rewards must be one of {SCALES}, got {scale!r}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    g = rewards.view(-1, group_size)
    mean = g.mean(1, keepdim=True)
    std = g.std(1) if group_size > 1 else torch.zeros(g.shape[0])
    adv = g - mean
    if scale == "group":
        adv = adv / (std[:, None] + eps)
    elif scale == "batch":
        adv = adv / (rewards.std() + eps)
    return adv.reshape(-1), std


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, ref_logp: torch.Tensor | None = None, beta: float = 0.0,
              eps_low: float = 0.2, eps_high: float = 0.2, loss_type: str = "dapo",
              max_completion_length: int | None = None, num_items: float | None = None
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token clipped surrogate (+ β·k3), aggregated by `loss_type`. logp etc. are (B, T)
    over completion tokens, advantages (B,). `num_items`: active tokens in the whole
    generation batch for dapo (defaults to this batch's)."""
    m = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None]
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * a, clipped * a)
    kl = None
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs reference log-probs")
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * m).sum(1) / m.sum(1).clamp(min=1)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * m).sum() / m.sum().clamp(min=1)
    elif loss_type == "dr_grpo":
        L = max_completion_length if max_completion_length is not None else logp.shape[1]
        loss = (per_token * m).sum() / (logp.shape[0] * L)
    elif loss_type == "dapo":
        n = num_items if num_items is not None else m.sum().clamp(min=1)
        loss = (per_token * m).sum() / n
    else:
        raise ValueError(f"loss_type must be one of {AGGREGATIONS}, got {loss_type!r}")
    with torch.no_grad():
        n_tok = m.sum().clamp(min=1)
        low = ((ratio < 1 - eps_low) & (a < 0)).to(m.dtype)
        high = ((ratio > 1 + eps_high) & (a > 0)).to(m.dtype)
        metrics = {"clip_ratio/low": float((low * m).sum() / n_tok),
                   "clip_ratio/high": float((high * m).sum() / n_tok),
                   "clip_ratio": float(((low + high) * m).sum() / n_tok)}
        if kl is not None:
            metrics["kl"] = float((kl * m).sum() / n_tok)
    return loss, metrics
