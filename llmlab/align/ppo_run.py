"""PPO on the shared loop, as TRL's PPOTrainer with the value head on the policy's trunk.

`PPOBatches` makes a rollout: batch_size × grad_accum prompts -> one completion each from the
KV-cache engine -> a score at EOS from the reward model (or the task's verifier). From it,
once and without grad: log-probs of the policy (old) and the reference, values, the per-token
KL-penalised rewards, GAE advantages (whitened) and returns. It then serves the rollout
`ppo_epochs` times, in grad_accum micro-batches per epoch (one optimizer step per epoch).
`ppo_loss_fn` re-scores a micro-batch with the current policy and value head.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from llmlab.align.common import logprobs_from_logits
from llmlab.align.config import PPOConfig
from llmlab.align.ppo import advantages_and_returns, ppo_loss
from llmlab.align.reward import ScalarHead
from llmlab.align.rollout import pick_prompts, sample
from llmlab.tasks.verifiers import score_many

ROLLOUT_METRICS = ("reward/mean", "reward/std", "kl", "non_score_reward", "rlhf_reward",
                   "completion_length")
LOSS_METRICS = ("policy_loss", "value_loss", "clipfrac", "vf_clipfrac", "approxkl")


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
        self.ref, self.rm, self.rank = ref, reward_model, rank
        self.k, self.served, self.cached = 0, 0, None

    def _chunks(self, n: int) -> list[slice]:
        return [slice(i, min(i + self.bs, n)) for i in range(0, n, self.bs)]

    def _ref_logp(self, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        from llmlab.peft.model import disable_adapters

        model = self.ref if self.ref is not None else self.policy.model
        ctx = disable_adapters(self.policy) if self.ref is None else contextlib.nullcontext()
        with ctx:
            logits = model(ids, attention_mask=attn).logits
        return logprobs_from_logits(logits, ids, self.cfg.temperature)

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
            logits, v = self.policy(ids[s], attn[s], with_logits=True)
            logp.append(logprobs_from_logits(logits, ids[s], c.temperature))
            values.append(v[:, :-1])  # the value of the state each token is sampled from
            ref_logp.append(self._ref_logp(ids[s], attn[s]))
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
        logits, values = model(b["ids"], b["attn"], with_logits=True)
        logp = logprobs_from_logits(logits, b["ids"], cfg.temperature)
        loss, m = ppo_loss(logp, b["old_logp"], b["adv"], values[:, :-1], b["old_values"],
                           b["returns"], b["cmask"], cfg.cliprange, cfg.cliprange_value,
                           cfg.vf_coef)
        return loss, {"tokens": int(b["cmask"].sum()), **m, **b["stats"]}
    return loss_fn
