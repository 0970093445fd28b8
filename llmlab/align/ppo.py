"""PPO for language models (Ziegler et al. 2019; Huang et al. 2024 "N+ implementation details"),
following TRL's PPOTrainer.

Per completion token t: reward r_t = -kl_coef · KL_t, plus the reward-model (or verifier)
score at the last completion token. KL_t estimates KL(π || π_ref) from samples of π:
    k1 = log π - log π_ref          k3 = (π_ref/π - 1) - log(π_ref/π)   (Schulman 2020)
Advantages by GAE(γ, λ) over the completion, whitened; returns = advantages + values.
Loss = clipped policy loss + vf_coef · clipped value loss, over `ppo_epochs` passes.
Defaults are TRL's: clip 0.2, vf_coef 0.1, γ 1, λ 0.95, kl_coef 0.05, 4 epochs.
"""

from __future__ import annotations

import torch

from llmlab.align.common import masked_mean, masked_whiten
from llmlab.align.config import PPOConfig


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1"
                 ) -> torch.Tensor:
    logr = ref_logp - logp
    if estimator == "k1":
        return -logr
    if estimator == "k3":
        return logr.exp() - 1 - logr
    raise ValueError(f"kl_estimator must be k1 or k3, got {estimator!r}")


def token_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                  mask: torch.Tensor, kl_coef: float, estimator: str = "k1"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards (B, T), kl (B, T)): -kl_coef·KL everywhere, + score at each row's last
    completion token. mask is (B, T) over completion tokens (right-padded)."""
    kl = kl_per_token(logp, ref_logp, estimator) * mask
    rewards = -kl_coef * kl
    last = (mask.long().cumsum(1) == mask.long().sum(1, keepdim=True)) & mask.bool()
    rewards = rewards + last.to(rewards.dtype) * score[:, None]
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) backwards over T; positions
    outside the mask have zero reward and value, so the bootstrap past the end is 0."""
    m = mask.to(values.dtype)
    rewards, values = rewards * m, values * m
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        nextv = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * nextv - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    return adv, adv + values


def ppo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
             values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
             mask: torch.Tensor, cliprange: float = 0.2, cliprange_value: float = 0.2,
             vf_coef: float = 0.1) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate + clipped value loss, token means over the mask (TRL's PPOTrainer)."""
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf1 = (values - returns) ** 2
    vf2 = (v_clipped - returns) ** 2
    vf_loss = 0.5 * masked_mean(torch.max(vf1, vf2), mask)
    ratio = torch.exp(logp - old_logp)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    pg_loss = masked_mean(torch.max(pg1, pg2), mask)
    loss = pg_loss + vf_coef * vf_loss
    with torch.no_grad():
        return loss, {"policy_loss": float(pg_loss), "value_loss": float(vf_loss),
                      "clipfrac": float(masked_mean((pg2 > pg1).float(), mask)),
                      "vf_clipfrac": float(masked_mean((vf2 > vf1).float(), mask)),
                      "approxkl": float(0.5 * masked_mean((logp - old_logp) ** 2, mask))}


def advantages_and_returns(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                           values: torch.Tensor, mask: torch.Tensor, cfg: PPOConfig
                           ) -> dict[str, torch.Tensor]:
    """Everything PPO needs from one rollout, computed once before the epochs (no grad)."""
    rewards, kl = token_rewards(score, logp, ref_logp, mask, cfg.kl_coef, cfg.kl_estimator)
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
    adv, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    adv = masked_whiten(adv, mask) * mask
    return {"advantages": adv, "returns": returns, "rewards": rewards, "kl": kl}
