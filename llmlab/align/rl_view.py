"""What the RL page shows, computed by the training code itself (align/grpo.py, align/ppo.py,
align/rollout.py, tasks/verifiers.py) on one prompt:

- a group of G completions sampled as a GRPO rollout samples them, each with its verifiable
  reward and the verifier's own verdict (for code, the sandbox's status and output);
- the group's mean and std and each completion's advantage under a reward scaling;
- one real GRPO update on a LoRA copy of the model: each token's advantage and its weight in
  the loss (the aggregation), then the importance ratio after the step and whether the clip
  took over (token level, or GSPO's one ratio per sequence);
- PPO on the same completions: the value head's estimate per token, the per-token KL penalty
  and score, GAE advantages and returns, and what PPO's epochs change.
The model passed in is never changed: updates happen on a copy.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from llmlab.align.common import masked_mean, token_logprobs
from llmlab.align.config import GRPOConfig, PPOConfig
from llmlab.align.data import RL_TASKS, completion_ids, prompt_ids, task_prompts
from llmlab.align.grpo import (
    aggregation_weights,
    clipped,
    group_advantages,
    grpo_loss,
    importance_ratio,
)
from llmlab.align.ppo import advantages_and_returns, kl_per_token, ppo_loss
from llmlab.align.reward import ScalarHead
from llmlab.align.rollout import pack, sample
from llmlab.generate.chat import template_for
from llmlab.peft.model import get_peft_model
from llmlab.tasks.verifiers import check_verifier, score_details

MAX_INDEX = 200  # prompts of a task the page can pick
# "ends by stating its answer": the format reward of benchmarks/_align.py, arithmetic only
ARITH_FORMAT = r"answer is \$?-?[0-9][0-9,]*(\.[0-9]+)?\.?\s*$"
REWARDS = ("verifier", "format", "verifier+format")


def prompt_row(task: str, index: int, reward: str = "verifier") -> dict[str, Any]:
    """Prompt `index` of a bundled RL task's train split, {"prompt", "chat", "verifier"}, its
    verifier swapped for the format check (or summed with it) when `reward` says so."""
    if task not in RL_TASKS:
        raise ValueError(f"task: expected one of {', '.join(RL_TASKS)}, got {task!r}")
    if not 0 <= index < MAX_INDEX:
        raise ValueError(f"index: expected 0 to {MAX_INDEX - 1}, got {index}")
    if reward not in REWARDS:
        raise ValueError(f"reward: expected one of {', '.join(REWARDS)}, got {reward!r}")
    split = "test" if task == "humaneval" else "train"  # HumanEval has only a test split
    rows = task_prompts(task, index + 1, split=split)
    if index >= len(rows):
        raise ValueError(f"index: {task} has {len(rows)} prompts, got {index}")
    row = dict(rows[index])
    if reward != "verifier":
        if not task.startswith("arithmetic"):
            raise ValueError(f"reward: the format reward is for arithmetic tasks, not {task}")
        fmt = {"type": "format", "pattern": ARITH_FORMAT}
        row["verifier"] = fmt if reward == "format" else {
            "type": "sum", "parts": [row["verifier"], fmt], "weights": [1.0, 0.5]}
    check_verifier(row["verifier"])
    return row


def sample_group(lm: Any, row: dict[str, Any], n: int, max_new_tokens: int,
                 temperature: float, seed: int) -> list[dict[str, Any]]:
    """`n` completions of one prompt as a GRPO rollout draws them: [{"text", "ids"}]; ids end
    on the stop token when the completion stopped (the policy learns to stop)."""
    r = sample(lm.model, lm.tokenizer, template_for(lm), [row], n, max_new_tokens, temperature,
               seed)
    return [{"text": t, "ids": r.ids[i][1:][r.cmask[i].bool()].tolist()}
            for i, t in enumerate(r.texts)]


def typed_ids(lm: Any, row: dict[str, Any], text: str) -> list[int]:
    """A completion typed by the user as tokens, ending on the end-of-turn token for a chat
    prompt (as a sampled completion that stopped)."""
    return completion_ids(lm.tokenizer, template_for(lm), text, row.get("chat", True))


def score_group(texts: list[str], row: dict[str, Any]) -> list[dict[str, Any]]:
    """Each completion's reward and its verifier's verdict (tasks.verifiers.score_details)."""
    return score_details(texts, [row["verifier"]] * len(texts))


def advantages(rewards: list[float], group_size: int, scale: str) -> dict[str, Any]:
    """group_advantages as GRPO computes it: each group's mean and std, and the advantages."""
    r = torch.tensor(rewards, dtype=torch.float32)
    adv, std = group_advantages(r, group_size, scale)
    return {"advantages": adv.tolist(), "sum": float(adv.sum()),
            "mean": r.view(-1, group_size).mean(1).tolist(),
            "std": std.tolist(), "batch_std": float(r.std()) if r.numel() > 1 else 0.0,
            "zero_signal": float((std == 0).float().mean())}


def _tensors(lm: Any, row: dict[str, Any], comps: list[list[int]]) -> tuple[torch.Tensor, ...]:
    vocab = lm.model.cfg.vocab_size
    for i, c in enumerate(comps):
        if not c or any(not 0 <= t < vocab for t in c):
            raise ValueError(f"completions[{i}].ids: expected 1 or more token ids below {vocab}")
    p = prompt_ids(lm.tokenizer, template_for(lm), row["prompt"], row.get("chat", True))
    return pack([p] * len(comps), comps)


def _lora_copy(lm: Any, r: int = 8, alpha: float = 16.0) -> Any:
    """A LoRA policy as `llmlab grpo|ppo` makes one (q_proj, v_proj), on a copy of the model:
    it starts equal to the model, which stays the reference (its adapters disabled)."""
    return get_peft_model(copy.deepcopy(lm.model), "lora", r=r, lora_alpha=alpha,
                          target_modules=["q_proj", "v_proj"])


def _tokens(lm: Any, comps: list[list[int]]) -> list[list[str]]:
    return [[lm.tokenizer.decode([t]) for t in c] for c in comps]


def _rows(x: torch.Tensor, cmask: torch.Tensor) -> list[list[float]]:
    """(B, T-1) values at each row's completion tokens, as ragged lists."""
    x = x.expand_as(cmask) if x.shape[1] == 1 else x
    return [x[i][cmask[i].bool()].tolist() for i in range(x.shape[0])]


def grpo_step(lm: Any, row: dict[str, Any], comps: list[list[int]], rewards: list[float],
              cfg: GRPOConfig, lr: float, seed: int = 0) -> dict[str, Any]:
    """One GRPO optimizer step (AdamW, `lr`) on this group, on a LoRA copy of the model, with
    the training loss (`grpo_loss`). Before: advantages and each token's weight in the loss.
    After: the ratio π_new/π_old per token (or per sequence, GSPO), the clip flags, the loss
    and k3 KL to the reference under the new policy: what a second pass (μ = 2) would see."""
    cfg.validate()
    torch.manual_seed(seed)  # the LoRA A matrices
    ids, attn, cmask = _tensors(lm, row, comps)
    adv, _ = group_advantages(torch.tensor(rewards, dtype=torch.float32), len(comps),
                              cfg.scale_rewards)
    policy = _lora_copy(lm)
    T, eh = cfg.temperature, cfg.epsilon_high or cfg.epsilon
    kw = dict(beta=cfg.beta, eps_low=cfg.epsilon, eps_high=eh, loss_type=cfg.loss_type,
              max_completion_length=cfg.max_new_tokens,
              importance_sampling_level=cfg.importance_sampling_level)
    with torch.no_grad():
        policy.eval()
        # A fresh LoRA adds exactly zero (B = 0): π_old is the reference π_ref too.
        old = token_logprobs(policy, ids, attn, T)
    policy.train()
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr,
                            weight_decay=0.0)
    logp = token_logprobs(policy, ids, attn, T)
    loss, _ = grpo_loss(logp, old, adv, cmask, old, **kw)
    loss.backward()
    opt.step()
    with torch.no_grad():
        policy.eval()
        new = token_logprobs(policy, ids, attn, T)
        ratio = importance_ratio(new, old, cmask, cfg.importance_sampling_level)
        low, high = clipped(ratio, adv, cfg.epsilon, eh)
        loss_after, m_after = grpo_loss(new, old, adv, cmask, old, **kw)
        d = old - new
        kl = torch.exp(d) - d - 1  # k3, as the loss's β term
    w = aggregation_weights(cmask, cfg.loss_type, cfg.max_new_tokens)
    return {"tokens": _tokens(lm, comps), "advantages": adv.tolist(),
            "weight": _rows(w, cmask), "seq_weight": w.sum(1).tolist(),
            "ratio": _rows(ratio, cmask),
            "seq_ratio": [float(x) for x in ratio.squeeze(1)] if ratio.shape[1] == 1 else None,
            "clipped_low": _rows(low.float(), cmask), "clipped_high": _rows(high.float(), cmask),
            "kl": _rows(kl, cmask), "loss_before": float(loss.detach()),
            "loss_after": float(loss_after),
            "clip_ratio": m_after["clip_ratio"], "clip_ratio_low": m_after["clip_ratio/low"],
            "clip_ratio_high": m_after["clip_ratio/high"],
            "kl_mean": float(masked_mean(kl, cmask))}


def ppo_view(lm: Any, row: dict[str, Any], comps: list[list[int]], scores: list[float],
             cfg: PPOConfig, lr: float, seed: int = 0) -> dict[str, Any]:
    """PPO on these completions as one rollout (align/ppo.py): with a fresh value head (V = 0,
    as `llmlab ppo` starts) and the policy equal to the reference, the per-token rewards
    (-kl_coef·KL, plus the score at the last token), GAE advantages (whitened) and returns;
    then `cfg.ppo_epochs` real optimizer steps of ppo_loss on a LoRA copy, and the value
    estimates, KL to the reference and ratio after them."""
    cfg.validate()
    torch.manual_seed(seed)
    ids, attn, cmask = _tensors(lm, row, comps)
    model = ScalarHead(_lora_copy(lm), zero_init=True)
    T = cfg.temperature
    score = torch.tensor(scores, dtype=torch.float32)
    with torch.no_grad():
        model.eval()
        old, v = model(ids, attn, with_logprobs=True, temperature=T)
        old_v = v[:, :-1].float()  # the value of the state each token is sampled from
        ref_lp = old  # a fresh LoRA adds exactly zero: the policy is the reference here
        out = advantages_and_returns(score, old, ref_lp, old_v, cmask, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            weight_decay=0.0)
    losses = []
    for _ in range(cfg.ppo_epochs):  # TRL: one optimizer step per epoch over the rollout
        logp, v = model(ids, attn, with_logprobs=True, temperature=T)
        loss, m = ppo_loss(logp, old, out["advantages"], v[:, :-1], old_v * cmask,
                           out["returns"], cmask, cfg.cliprange, cfg.cliprange_value,
                           cfg.vf_coef)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append({"loss": float(loss.detach()), **m})
    with torch.no_grad():
        model.eval()
        new, v = model(ids, attn, with_logprobs=True, temperature=T)
        kl_after = kl_per_token(new, ref_lp, cfg.kl_estimator)
    return {"tokens": _tokens(lm, comps), "scores": scores,
            "values": _rows(old_v, cmask), "kl": _rows(out["kl"], cmask),
            "rewards": _rows(out["rewards"], cmask),
            "kl_penalty": (-cfg.kl_coef * out["kl"]).sum(1).tolist(),
            "advantages": _rows(out["advantages"], cmask),
            "returns": _rows(out["returns"], cmask), "epochs": losses,
            "values_after": _rows(v[:, :-1].float(), cmask), "kl_after": _rows(kl_after, cmask),
            "ratio_after": _rows(torch.exp(new - old), cmask)}
