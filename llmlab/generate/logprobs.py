"""Log-probabilities of tokens: the chosen one's and its top alternatives, per step.

They come from the model's own distribution, log_softmax of the raw logits, *before* any
repetition penalty, temperature, top-k/top-p or min-p: that is what vLLM returns by default
and what OpenAI's docs describe as a token's log probability. So the numbers do not depend
on the sampling settings, and a greedy and a sampled request score a token alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MAX_TOP = 20  # OpenAI's cap on top_logprobs


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (id, logprob), best first


def check_top(k: int | None, name: str = "logprobs") -> None:
    if k is not None and not 0 <= k <= MAX_TOP:
        raise ValueError(f"{name} must be in [0, {MAX_TOP}] (or None for off), got {k}")


def step_logprobs(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> list[TokenLogprob]:
    """(B, V) raw logits and the (B,) chosen ids -> one TokenLogprob per row."""
    logp = logits.float().log_softmax(-1)
    chosen = logp.gather(-1, tokens.view(-1, 1).long())[:, 0].tolist()
    ids = tokens.view(-1).tolist()
    if k > 0:
        top_lp, top_i = logp.topk(min(k, logp.shape[-1]), dim=-1)
        tops = [list(zip(i, v, strict=True)) for i, v in
                zip(top_i.tolist(), top_lp.tolist(), strict=True)]
    else:
        tops = [[] for _ in ids]
    return [TokenLogprob(t, c, top) for t, c, top in zip(ids, chosen, tops, strict=True)]
