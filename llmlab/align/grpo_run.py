"""GRPO on the shared loop: a batch source that samples G completions per prompt with the
batched KV-cache engine, scores them with verifiers and serves each rollout `iterations`
times (the inner PPO-style epochs against the old log-probs taken at generation time)."""

from __future__ import annotations

import random
import warnings
from typing import Any

import torch
from torch import nn

from llmlab.align.common import disable_adapters, token_logprobs
from llmlab.align.config import GRPOConfig
from llmlab.align.data import pad_right, prompt_ids
from llmlab.align.grpo import group_advantages, grpo_loss
from llmlab.align.rewards import score_many


class RolloutBatches:
    """next_batch() -> a rollout dict (tensors + the rollout's metrics)."""

    def __init__(self, model: nn.Module, tok: Any, template: Any, prompts: list[dict[str, Any]],
                 cfg: GRPOConfig, seed: int = 0, ref: nn.Module | None = None) -> None:
        self.model, self.tok, self.template, self.prompts = model, tok, template, prompts
        self.cfg, self.seed, self.ref = cfg, seed, ref
        self.k, self.cached, self.served = 0, None, 0

    def _gen_model(self) -> nn.Module:
        # LoRA layers are injected in place, so the base Transformer generates with them.
        return getattr(self.model, "base_model", self.model)

    @torch.no_grad()
    def _rollout(self) -> dict[str, Any]:
        from llmlab.generate.engine import complete, make_params

        c, G = self.cfg, self.cfg.num_generations
        rng = random.Random(self.seed * 1_000_003 + self.k)
        picks = [self.prompts[rng.randrange(len(self.prompts))] for _ in range(c.prompts_per_step)]
        pids = [prompt_ids(self.tok, self.template, p["prompt"], p.get("chat", True))
                for p in picks for _ in range(G)]
        params = make_params(self.tok, max_new_tokens=c.max_new_tokens,
                             temperature=c.temperature, seed=self.seed + self.k,
                             stop=list(self.template.stop))
        was = self.model.training
        self.model.eval()
        outs = complete(self._gen_model(), self.tok, pids, params)
        self.model.train(was)
        rewards = torch.tensor(score_many([o.text for o in outs],
                                          [p["verifier"] for p in picks for _ in range(G)]))
        adv, std = group_advantages(rewards, G, c.scale_rewards)
        seqs = [p + o.token_ids for p, o in zip(pids, outs, strict=True)]
        ids, attn = pad_right(seqs)
        cmask = torch.zeros_like(ids)
        for i, (p, o) in enumerate(zip(pids, outs, strict=True)):
            cmask[i, len(p):len(p) + len(o.token_ids)] = 1
        old = token_logprobs(self.model, ids, attn)
        ref = None
        if c.beta:
            if self.ref is not None:
                ref = token_logprobs(self.ref, ids, attn)
            else:
                with disable_adapters(self.model):
                    ref = token_logprobs(self.model, ids, attn)
        zero = float((std == 0).float().mean())
        if zero >= c.zero_std_warn:
            warnings.warn(f"GRPO: {zero:.0%} of groups have identical rewards (no signal); "
                          "try more generations, a higher temperature or easier prompts",
                          stacklevel=2)
        lens = cmask.sum(1).float()
        return {"ids": ids, "attn": attn, "cmask": cmask[:, 1:], "old": old, "ref": ref,
                "adv": adv, "stats": {"reward/mean": float(rewards.mean()),
                                      "reward/std": float(rewards.std()) if len(rewards) > 1
                                      else 0.0,
                                      "completion_length": float(lens.mean()),
                                      "frac_reward_zero_std": zero}}

    def next_batch(self) -> dict[str, Any]:
        if self.cached is None or self.served >= self.cfg.iterations:
            self.cached, self.served = self._rollout(), 0
            self.k += 1
        self.served += 1
        return self.cached

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.k, self.cached = int(state["k"]), None


def grpo_loss_fn(cfg: GRPOConfig):  # noqa: ANN201
    def loss_fn(model: nn.Module, b: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        logp = token_logprobs(model, b["ids"], b["attn"])
        loss, m = grpo_loss(logp, b["old"], b["adv"], b["cmask"], b["ref"], cfg.beta,
                            cfg.epsilon, cfg.epsilon_high or cfg.epsilon, cfg.loss_type,
                            max_completion_length=cfg.max_new_tokens)
        m.setdefault("kl", 0.0)
        return loss, {"tokens": int(b["cmask"].sum()), **m, **b["stats"]}
    return loss_fn
