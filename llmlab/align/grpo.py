"""Group Relative Policy Optimisation (Shao et al. 2024, DeepSeekMath) as TRL's GRPOTrainer.

G completions per prompt; advantage A = (r - mean_group(r)) / (std + 1e-4) where std is
    scale_rewards="group": the group's std;  "batch": the whole batch's;  "none": no division.
Per token: ρ = π/π_old, loss_t = -min(ρ·A, clip(ρ, 1-ε_low, 1+ε_high)·A) + β·k3_t, where
k3_t = π_ref/π - log(π_ref/π) - 1 (default β = 0: no reference needed). GSPO (Zheng et al.
2025, importance_sampling_level="sequence") uses one ratio per sequence instead,
s = exp(mean_t log(π/π_old)), clipped the same way, for every token of it. Aggregation:
    grpo:    mean over each sequence's tokens, then over sequences (length bias: Liu et al.)
    bnpo:    sum over all tokens / number of tokens in this batch
    dr_grpo: sum over all tokens / (num sequences · max_completion_length)
    dapo:    sum over all tokens / tokens in the whole generation batch (all micro-batches)
Dr. GRPO (Liu et al. 2025) is loss_type="dr_grpo" AND scale_rewards="none": both of the
paper's fixes (no length normalisation, no std normalisation). ε_high > ε_low is DAPO's
"clip-higher" (Yu et al. 2025).

On the shared loop, `RolloutBatches` samples G completions per prompt with the batched
KV-cache engine, scores them with verifiers and serves each rollout `iterations` times (the
inner PPO-style epochs against the old log-probs taken at generation time). Log-probs (old,
reference and current) are taken at the sampling temperature, as TRL's GRPOTrainer: the ratio
π/π_old then compares the distributions tokens were drawn from.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from torch import nn

from llmlab.align.common import Reference, token_logprobs
from llmlab.align.config import GRPOConfig
from llmlab.align.rollout import pick_prompts, sample
from llmlab.tasks.metrics import mcnemar, wilson_interval
from llmlab.tasks.verifiers import score_many

SCALES = ("group", "batch", "none")
AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")
LEVELS = ("token", "sequence")


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


def aggregation_weights(mask: torch.Tensor, loss_type: str = "dapo",
                        max_completion_length: int | None = None,
                        num_items: float | torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) weight of each token's loss in the total: loss = Σ_t w_t · loss_t. Zero off the
    mask; `loss_type` decides how tokens and sequences are averaged (module docstring)."""
    m = mask.float()
    if loss_type == "grpo":
        return m / m.sum(1, keepdim=True).clamp(min=1) / m.shape[0]
    if loss_type == "bnpo":
        return m / m.sum().clamp(min=1)
    if loss_type == "dr_grpo":
        L = max_completion_length if max_completion_length is not None else m.shape[1]
        return m / (m.shape[0] * L)
    if loss_type == "dapo":
        return m / (num_items if num_items is not None else m.sum().clamp(min=1))
    raise ValueError(f"loss_type must be one of {AGGREGATIONS}, got {loss_type!r}")


def importance_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor,
                     level: str = "token") -> torch.Tensor:
    """π/π_old per token (B, T), or GSPO's per sequence (B, 1): exp of the mean log-ratio over
    the sequence's completion tokens."""
    log_ratio = logp - old_logp
    if level == "token":
        return torch.exp(log_ratio)
    if level == "sequence":
        m = mask.to(logp.dtype)
        return torch.exp((log_ratio * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1))
    raise ValueError(f"importance_sampling_level must be one of {LEVELS}, got {level!r}")


def clipped(ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float = 0.2,
            eps_high: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) bool masks where the clip took over: the ratio left [1-ε_low, 1+ε_high]
    on the side the advantage pushes it towards, so that token gets no gradient."""
    a = advantages[:, None]
    return (ratio < 1 - eps_low) & (a < 0), (ratio > 1 + eps_high) & (a > 0)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, ref_logp: torch.Tensor | None = None, beta: float = 0.0,
              eps_low: float = 0.2, eps_high: float = 0.2, loss_type: str = "dapo",
              max_completion_length: int | None = None, num_items: float | None = None,
              importance_sampling_level: str = "token"
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token clipped surrogate (+ β·k3), aggregated by `loss_type`. logp etc. are (B, T)
    over completion tokens, advantages (B,). `num_items`: active tokens in the whole
    generation batch for dapo (defaults to this batch's)."""
    m = mask.to(logp.dtype)
    ratio = importance_ratio(logp, old_logp, mask, importance_sampling_level)
    a = advantages[:, None]
    per_token = -torch.min(ratio * a, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a)
    kl = None
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs reference log-probs")
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1
        per_token = per_token + beta * kl
    w = aggregation_weights(mask, loss_type, max_completion_length, num_items)
    loss = (per_token.expand_as(w) * w).sum()
    with torch.no_grad():
        low, high = (x.to(m.dtype) for x in clipped(ratio, advantages, eps_low, eps_high))
        # A sequence-level ratio is one per sequence: clip fractions count sequences (as TRL).
        cm = m if ratio.shape[1] > 1 else torch.ones_like(ratio)
        n = cm.sum().clamp(min=1)
        metrics = {"clip_ratio/low": float((low * cm).sum() / n),
                   "clip_ratio/high": float((high * cm).sum() / n),
                   "clip_ratio": float(((low + high) * cm).sum() / n)}
        if kl is not None:
            metrics["kl"] = float((kl * m).sum() / m.sum().clamp(min=1))
    return loss, metrics


class RolloutBatches:
    """next_batch() -> a rollout dict (tensors + the rollout's metrics)."""

    def __init__(self, model: nn.Module, tok: Any, template: Any, prompts: list[dict[str, Any]],
                 cfg: GRPOConfig, seed: int = 0, ref: nn.Module | None = None,
                 rank: int = 0, grad_accum: int = 1) -> None:
        self.model, self.tok, self.template, self.prompts = model, tok, template, prompts
        self.cfg, self.seed, self.ref, self.rank = cfg, seed, Reference(ref), rank
        # Each of an optimizer step's `grad_accum` micro-batches is its own rollout (memory
        # holds one at a time); with `iterations` > 1 the step's rollouts are served again,
        # in order, after each update: pass i of rollout r comes after pass i-1's update.
        self.accum = max(1, grad_accum)
        self.k = 0
        self.group: list[dict[str, Any]] = []
        self.calls = 0

    @torch.no_grad()
    def _rollout(self) -> dict[str, Any]:
        c, G = self.cfg, self.cfg.num_generations
        picks = pick_prompts(self.prompts, c.prompts_per_step, self.seed, self.k, self.rank)
        t0 = time.perf_counter()
        r = sample(self.model, self.tok, self.template, picks, G, c.max_new_tokens,
                   c.temperature, self.seed + self.k + 100_003 * self.rank)
        decode_s = time.perf_counter() - t0  # sample() ends on host lists: no sync needed
        rewards = torch.tensor(score_many(r.texts, [p["verifier"] for p in r.picks]))
        adv, std = group_advantages(rewards, G, c.scale_rewards)
        dev = next(self.model.parameters()).device
        ids, attn = r.ids.to(dev), r.attn.to(dev)
        was = self.model.training
        self.model.eval()
        # With one pass per rollout the policy hasn't moved when the loss runs: its old
        # log-probs are the current ones, detached (as TRL), and the extra forward is skipped.
        old = token_logprobs(self.model, ids, attn, c.temperature) if c.iterations > 1 else None
        ref = self.ref.logprobs(ids, attn, c.temperature, policy=self.model) if c.beta else None
        self.model.train(was)
        zero = float((std == 0).float().mean())
        if zero >= c.zero_std_warn:
            warnings.warn(f"GRPO: {zero:.0%} of groups have identical rewards (no signal); "
                          "try more generations, a higher temperature or easier prompts",
                          stacklevel=2)
        return {"ids": ids, "attn": attn, "cmask": r.cmask.to(dev), "old": old, "ref": ref,
                "adv": adv.to(dev), "stats": {
                    "reward/mean": float(rewards.mean()),
                    "reward/std": float(rewards.std()) if len(rewards) > 1 else 0.0,
                    "completion_length": float(r.cmask.sum(1).float().mean()),
                    "frac_reward_zero_std": zero, "time/decode": decode_s}}

    def next_batch(self) -> dict[str, Any]:
        period = self.accum * self.cfg.iterations  # micro-batches per group of rollouts
        i = self.calls % period
        if i == 0:
            self.group = []
        self.calls += 1
        if i < self.accum:  # the first pass: sample
            self.group.append(self._rollout())
            self.k += 1
            return self.group[-1]
        return self.group[i % self.accum]

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Resuming mid-group would need the cached rollouts: start a fresh group.
        self.k, self.group, self.calls = int(state["k"]), [], 0


class HeldOut:
    """The Trainer's `eval_fn`: greedy accuracy on held-out prompts (a task's test split),
    scored by their verifiers. heldout/accuracy with its 95% Wilson interval, and against this
    process's first evaluation (the starting model; after a resume, the resumed one) the
    problems gained and lost and the exact McNemar p: whether a rise is more than noise."""

    def __init__(self, tok: Any, template: Any, prompts: list[dict[str, Any]],
                 max_new_tokens: int) -> None:
        self.tok, self.template, self.prompts = tok, template, prompts
        self.max_new_tokens = max_new_tokens
        self.first: list[int] | None = None

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        r = sample(model, self.tok, self.template, self.prompts, 1, self.max_new_tokens, 0.0, 0)
        right = [int(x >= 1.0) for x in score_many(r.texts, [p["verifier"] for p in r.picks])]
        n = len(right)
        lo, hi = wilson_interval(sum(right), n)
        out = {"heldout/accuracy": sum(right) / n, "heldout/ci_low": lo, "heldout/ci_high": hi,
               "heldout/n": n}
        if self.first is None:
            self.first = right
        else:
            t = mcnemar(self.first, right)
            out.update({"heldout/gained": t["gained"], "heldout/lost": t["lost"],
                        "heldout/p_value": t["p_value"]})
        return out


def grpo_loss_fn(cfg: GRPOConfig):  # noqa: ANN201
    def loss_fn(model: nn.Module, b: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        logp = token_logprobs(model, b["ids"], b["attn"], cfg.temperature)
        old = b["old"] if b["old"] is not None else logp.detach()
        loss, m = grpo_loss(logp, old, b["adv"], b["cmask"], b["ref"], cfg.beta,
                            cfg.epsilon, cfg.epsilon_high or cfg.epsilon, cfg.loss_type,
                            max_completion_length=cfg.max_new_tokens,
                            importance_sampling_level=cfg.importance_sampling_level)
        m.setdefault("kl", 0.0)
        return loss, {"tokens": int(b["cmask"].sum()), **m, **b["stats"]}
    return loss_fn
