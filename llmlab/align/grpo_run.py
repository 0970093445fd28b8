"""GRPO on the shared loop: a batch source that samples G completions per prompt with the
batched KV-cache engine, scores them with verifiers and serves each rollout `iterations`
times (the inner PPO-style epochs against the old log-probs taken at generation time).

Log-probs (old, reference and current) come from logits divided by the sampling temperature,
as TRL's GRPOTrainer: the ratio π/π_old then compares the distributions tokens were drawn from.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from llmlab.align.common import token_logprobs
from llmlab.align.config import GRPOConfig
from llmlab.align.grpo import group_advantages, grpo_loss
from llmlab.align.rollout import pick_prompts, sample
from llmlab.tasks.verifiers import score_many


class RolloutBatches:
    """next_batch() -> a rollout dict (tensors + the rollout's metrics)."""

    def __init__(self, model: nn.Module, tok: Any, template: Any, prompts: list[dict[str, Any]],
                 cfg: GRPOConfig, seed: int = 0, ref: nn.Module | None = None,
                 rank: int = 0, grad_accum: int = 1) -> None:
        self.model, self.tok, self.template, self.prompts = model, tok, template, prompts
        self.cfg, self.seed, self.ref, self.rank = cfg, seed, ref, rank
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
        r = sample(self.model, self.tok, self.template, picks, G, c.max_new_tokens,
                   c.temperature, self.seed + self.k + 100_003 * self.rank)
        rewards = torch.tensor(score_many(r.texts, [p["verifier"] for p in r.picks]))
        adv, std = group_advantages(rewards, G, c.scale_rewards)
        dev = next(self.model.parameters()).device
        ids, attn = r.ids.to(dev), r.attn.to(dev)
        was = self.model.training
        self.model.eval()
        # With one pass per rollout the policy hasn't moved when the loss runs: its old
        # log-probs are the current ones, detached (as TRL), and the extra forward is skipped.
        old = token_logprobs(self.model, ids, attn, c.temperature) if c.iterations > 1 else None
        ref = None
        if c.beta:
            if self.ref is not None:
                ref = token_logprobs(self.ref, ids, attn, c.temperature)
            else:
                from llmlab.peft.model import disable_adapters

                with disable_adapters(self.model):
                    ref = token_logprobs(self.model, ids, attn, c.temperature)
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
                    "frac_reward_zero_std": zero}}

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


def grpo_loss_fn(cfg: GRPOConfig):  # noqa: ANN201
    def loss_fn(model: nn.Module, b: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        logp = token_logprobs(model, b["ids"], b["attn"], cfg.temperature)
        old = b["old"] if b["old"] is not None else logp.detach()
        loss, m = grpo_loss(logp, old, b["adv"], b["cmask"], b["ref"], cfg.beta,
                            cfg.epsilon, cfg.epsilon_high or cfg.epsilon, cfg.loss_type,
                            max_completion_length=cfg.max_new_tokens)
        m.setdefault("kl", 0.0)
        return loss, {"tokens": int(b["cmask"].sum()), **m, **b["stats"]}
    return loss_fn
