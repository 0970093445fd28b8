"""PPO for language models (Ziegler et al. 2019; Huang et al. 2024 "N+ implementation details"),
following TRL's PPOTrainer.

Per completion token t: reward r_t = -kl_coef · KL_t, plus the reward-model (or verifier)
score at the last completion token. KL_t estimates KL(π || π_ref) from samples of π:
    k1 = log π - log π_ref          k3 = (π_ref/π - 1) - log(π_ref/π)   (Schulman 2020)
Advantages by GAE(γ, λ) over the completion, whitened; returns = advantages + values.
Loss = clipped policy loss + vf_coef · clipped value loss, over `ppo_epochs` passes.
Defaults are TRL's: clip 0.2, vf_coef 0.1, γ 1, λ 0.95, kl_coef 0.05, 4 epochs.

On the shared loop, as TRL's PPOTrainer with the value head on the policy's trunk:
`PPOBatches` makes a rollout: batch_size × grad_accum prompts -> one completion each from the
KV-cache engine -> a score at EOS from the reward model (or the task's verifier). From it,
once and without grad: log-probs of the policy (old) and the reference, values, the per-token
KL-penalised rewards, GAE advantages (whitened) and returns. It then serves the rollout
`ppo_epochs` times, in grad_accum micro-batches per epoch (one optimizer step per epoch).
`ppo_loss_fn` re-scores a micro-batch with the current policy and value head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llmlab.align.common import Reference, masked_mean, masked_whiten
from llmlab.align.config import PPOConfig
from llmlab.align.reward import ScalarHead
from llmlab.align.rollout import pick_prompts, sample
from llmlab.tasks.verifiers import score_many

ROLLOUT_METRICS = ("reward/mean", "reward/std", "kl", "non_score_reward", "rlhf_reward",
                   "completion_length")
LOSS_METRICS = ("policy_loss", "value_loss", "clipfrac", "vf_clipfrac", "approxkl")


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


class PPOBatches:
    """next_batch() -> a micro-batch dict of the current rollout (+ the rollout's metrics).
    `ref` is a frozen reference LM, or None for the policy with its adapters disabled;
    `reward_model` a frozen ScalarHead, or None to score with each prompt's verifier."""

    def __init__(self, policy: ScalarHead, tok: Any, template: Any,
                 prompts: list[dict[str, Any]], cfg: PPOConfig, batch_size: int,
                 grad_accum: int = 1, seed: int = 0, ref: nn.Module | None = None,
                 reward_model: ScalarHead | None = None, rank: int = 0) -> None:
        if reward_model is None and any("verifier" not in p for p in prompts):
            raise ValueError("PPO without --reward-model scores with each prompt's verifier, "
                             "and some prompts have none")
        self.policy, self.tok, self.template, self.prompts = policy, tok, template, prompts
        self.cfg, self.bs, self.accum, self.seed = cfg, batch_size, grad_accum, seed
        self.ref, self.rm, self.rank = Reference(ref), reward_model, rank
        self.k, self.served, self.cached = 0, 0, None

    def _chunks(self, n: int) -> list[slice]:
        return [slice(i, min(i + self.bs, n)) for i in range(0, n, self.bs)]

    def _scores(self, ids: torch.Tensor, attn: torch.Tensor, texts: list[str],
                picks: list[dict[str, Any]]) -> torch.Tensor:
        if self.rm is None:
            return torch.tensor(score_many(texts, [p["verifier"] for p in picks]))
        return torch.cat([self.rm.score(ids[s], attn[s]).float().cpu()
                          for s in self._chunks(len(texts))])

    @torch.no_grad()
    def _rollout(self) -> dict[str, Any]:
        c, n = self.cfg, self.bs * self.accum
        picks = pick_prompts(self.prompts, n, self.seed, self.k, self.rank)
        r = sample(self.policy, self.tok, self.template, picks, 1, c.max_new_tokens,
                   c.temperature, self.seed + self.k + 100_003 * self.rank)
        dev = next(self.policy.parameters()).device
        ids, attn, mask = r.ids.to(dev), r.attn.to(dev), r.cmask.to(dev)
        scores = self._scores(ids, attn, r.texts, r.picks)
        if c.missing_eos_penalty:
            scores = scores - c.missing_eos_penalty * (~r.stopped).float()
        was = self.policy.training
        self.policy.eval()
        logp, ref_logp, values = [], [], []
        for s in self._chunks(n):
            lp, v = self.policy(ids[s], attn[s], with_logprobs=True, temperature=c.temperature)
            logp.append(lp)
            values.append(v[:, :-1])  # the value of the state each token is sampled from
            ref_logp.append(self.ref.logprobs(ids[s], attn[s], c.temperature,
                                              policy=self.policy.model))
        self.policy.train(was)
        old, ref, vals = torch.cat(logp), torch.cat(ref_logp), torch.cat(values).float()
        out = advantages_and_returns(scores.to(dev), old, ref, vals, mask, c)
        kl = out["kl"].sum(1)
        stats = {"reward/mean": float(scores.mean()),
                 "reward/std": float(scores.std()) if n > 1 else 0.0,
                 "kl": float(kl.mean()), "non_score_reward": float(-c.kl_coef * kl.mean()),
                 "rlhf_reward": float(scores.mean() - c.kl_coef * kl.mean()),
                 "completion_length": float(mask.sum(1).float().mean())}
        return {"ids": ids, "attn": attn, "cmask": mask, "old_logp": old,
                "old_values": vals * mask, "adv": out["advantages"], "returns": out["returns"],
                "stats": stats}

    def next_batch(self) -> dict[str, Any]:
        if self.cached is None or self.served >= self.cfg.ppo_epochs * self.accum:
            self.cached, self.served = self._rollout(), 0
            self.k += 1
        epoch, micro = divmod(self.served, self.accum)
        self.served += 1
        n = self.bs * self.accum
        # TRL shuffles the rollout each epoch; a fixed function of (seed, rollout, epoch).
        g = torch.Generator().manual_seed(self.seed * 7919 + self.k * 131 + epoch)
        rows = torch.randperm(n, generator=g)[micro * self.bs:(micro + 1) * self.bs]
        b = self.cached
        T = int(b["attn"][rows].sum(1).max())  # trim the columns only padding fills
        mb = {k: b[k][rows.to(b[k].device), :T] for k in ("ids", "attn")}
        mb.update({k: b[k][rows.to(b[k].device), :T - 1]
                   for k in ("cmask", "old_logp", "old_values", "adv", "returns")})
        return {**mb, "stats": b["stats"]}

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.k, self.cached = int(state["k"]), None  # resume starts a fresh rollout


def ppo_loss_fn(cfg: PPOConfig):  # noqa: ANN201
    def loss_fn(model: nn.Module, b: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        logp, values = model(b["ids"], b["attn"], with_logprobs=True,
                             temperature=cfg.temperature)
        loss, m = ppo_loss(logp, b["old_logp"], b["adv"], values[:, :-1], b["old_values"],
                           b["returns"], b["cmask"], cfg.cliprange, cfg.cliprange_value,
                           cfg.vf_coef)
        return loss, {"tokens": int(b["cmask"].sum()), **m, **b["stats"]}
    return loss_fn
