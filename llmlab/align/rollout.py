"""Rollouts for on-policy RL (GRPO, PPO): prompts -> sampled completions with the batched
KV-cache engine -> right-padded prompt+completion ids with a completion mask.

A completion that ended on a stop token keeps that token (as TRL keeps EOS): the policy is
trained on when to stop, and a reward model reads its score at the end-of-turn token it was
trained on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmlab.align.data import pad_right, prompt_ids
from llmlab.generate.engine import complete, make_params
from llmlab.model import Transformer


@dataclass
class Rollout:
    ids: torch.Tensor  # (B, T) prompt + completion, right-padded
    attn: torch.Tensor  # (B, T)
    cmask: torch.Tensor  # (B, T-1) completion tokens, aligned with token_logprobs' targets
    texts: list[str]  # completions with stop strings cut (what verifiers score)
    stopped: torch.Tensor  # (B,) bool: ended on a stop token or string, not the length budget
    picks: list[dict[str, Any]]  # the prompt row of each completion


def generator(model: nn.Module) -> nn.Module:
    """The Transformer that samples, found under DDP/compile, a value head and a LoRA
    PeftModel (LoRA layers are injected in place, so the bare Transformer generates with
    them; prompt/prefix adapters would be skipped, so they are refused)."""

    m = model
    while not isinstance(m, Transformer):
        if getattr(m, "method", "lora") not in ("lora", "dora", "qlora"):
            raise ValueError(f"RL rollouts need a LoRA-family adapter, not {m.method!r}")
        inner = [getattr(m, a, None) for a in ("_orig_mod", "module", "model", "base_model")]
        m = next((x for x in inner if isinstance(x, nn.Module)), None)
        if m is None:
            raise TypeError(f"no Transformer inside {type(model).__name__}")
    return m


def pick_prompts(prompts: list[dict[str, Any]], n: int, seed: int, k: int, rank: int = 0
                 ) -> list[dict[str, Any]]:
    """n prompts for rollout k on `rank`: a fixed function of (seed, k, rank), so resume
    repeats it and ranks under torchrun draw different prompts."""
    rng = random.Random(f"rollout-{seed}-{k}-{rank}")
    return [prompts[rng.randrange(len(prompts))] for _ in range(n)]


@torch.no_grad()
def sample(model: nn.Module, tok: Any, template: Any, picks: list[dict[str, Any]],
           per_prompt: int, max_new_tokens: int, temperature: float, seed: int) -> Rollout:
    """`per_prompt` completions for each prompt in `picks` (consecutive rows per prompt)."""

    once = [prompt_ids(tok, template, p["prompt"], p.get("chat", True)) for p in picks]
    params = make_params(tok, max_new_tokens=max_new_tokens, temperature=temperature,
                         seed=seed, stop=list(template.stop))
    was = model.training
    model.eval()
    try:  # each prompt prefilled once, its cache copied for the per_prompt samples
        outs = complete(generator(model), tok, once, params, n=per_prompt)
    finally:
        model.train(was)
    rows = [p for p in picks for _ in range(per_prompt)]
    pids = [p for p in once for _ in range(per_prompt)]
    comps = [o.token_ids + ([o.stop_token] if o.stop_token is not None else []) for o in outs]
    ids, attn, cmask = pack(pids, comps)
    stopped = torch.tensor([o.finish_reason == "stop" for o in outs])
    return Rollout(ids, attn, cmask, [o.text for o in outs], stopped, rows)


def pack(prompts: list[list[int]], completions: list[list[int]]
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attn, cmask) of prompt + completion rows, right-padded; cmask (B, T-1) marks the
    completion tokens, aligned with token_logprobs' targets."""
    ids, attn = pad_right([p + c for p, c in zip(prompts, completions, strict=True)])
    cmask = torch.zeros_like(ids)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        cmask[i, len(p):len(p) + len(c)] = 1
    return ids, attn, cmask[:, 1:]
