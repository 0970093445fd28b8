"""Turning logits into the next token: penalties, temperature, top-k, top-p, min-p; and
when a row is done (a stop token, or its token budget).

The order follows transformers' `generate` (repetition penalty, then temperature, top-k,
top-p, min-p), so the same settings give the same distribution in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

# What torch.Generator.manual_seed accepts (int64 or uint64); anything else would fail later,
# deep inside decoding, with torch's unhelpful "Overflow when unpacking long long".
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0 disables
    top_p: float = 1.0  # 1 disables
    min_p: float = 0.0  # 0 disables
    repetition_penalty: float = 1.0  # 1 disables (CTRL, Keskar et al. 2019)
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)  # stop strings, cut from the output
    seed: int | None = None
    # Log-probabilities of each sampled token (generate/logprobs.py): None = off, k = also
    # the k most likely alternatives (0-20).
    logprobs: int | None = None
    # a generate.constrain.Constraint: tokens its grammar forbids are masked before sampling
    constraint: Any = None

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise ValueError(f"seed must be in [-2**63, 2**64 - 1], got {self.seed}")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError(f"logprobs must be in [0, 20] or None, got {self.logprobs}")
        if self.constraint is not None and not self.stop_token_ids:
            raise ValueError("constraint: needs a stop token (stop_token_ids) to end the output")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Divide positive logits (multiply negative ones) of tokens already in the context.

    `seen` is a (B, V) bool mask of tokens present in the prompt or the output so far."""
    if penalty == 1.0:
        return logits
    pen = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, pen, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability sums to at least p (nucleus)."""
    if p >= 1.0:
        return logits
    sorted_logits, idx = torch.sort(logits, descending=False, dim=-1)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    # Drop the low tail whose total is <= 1 - p; the top token always survives.
    drop = cum <= (1 - p)
    drop[..., -1] = False
    mask = drop.scatter(-1, idx, drop)
    return logits.masked_fill(mask, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least min_p times the top token's (Nguyen et al.)."""
    if min_p <= 0:
        return logits
    probs = logits.softmax(-1)
    thresh = min_p * probs.max(-1, keepdim=True).values
    return logits.masked_fill(probs < thresh, float("-inf"))


def process_logits(
    logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """Everything between the model's raw logits and the distribution sampled from."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return logits
    if params.temperature != 1.0:
        logits = logits / params.temperature
    logits = top_k_filter(logits, params.top_k)
    logits = top_p_filter(logits, params.top_p)
    return min_p_filter(logits, params.min_p)


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids."""
    logits = process_logits(logits, params, seen)
    if params.greedy:
        return logits.argmax(-1)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def seen_tokens(prompts: list[list[int]], vocab_size: int,
                device: torch.device | str) -> torch.Tensor:
    """(B, V) bool: the tokens of each prompt, for the repetition penalty."""
    seen = torch.zeros(len(prompts), vocab_size, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        seen[i, torch.tensor(p, device=device)] = True
    return seen


@dataclass
class Step:
    """One decoding step for the whole batch."""

    tokens: torch.Tensor  # (B,) the sampled ids (pad_id for rows already done)
    done: torch.Tensor  # (B,) bool, True once a row hit a stop token or its budget
    logits: torch.Tensor | None = None  # (B, V) raw logits, when asked for


class Stopper:
    """The token-level stop rule every decoder shares: a row is done after a stop token or
    its `max_new_tokens`-th token; later tokens of a done row read as `pad_id`."""

    def __init__(self, params: SamplingParams, batch: int, device: torch.device | str,
                 pad_id: int = 0) -> None:
        self.stops = torch.tensor(params.stop_token_ids or [-1], device=device)
        self.last = params.max_new_tokens - 1
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.pad_id = pad_id

    def step(self, i: int, tokens: torch.Tensor, logits: torch.Tensor | None = None) -> Step:
        """The Step for the `i`-th new tokens (counting from 0)."""
        out = tokens.masked_fill(self.done, self.pad_id)
        # A new tensor, not in place: each Step keeps its own `done`.
        self.done = self.done | torch.isin(tokens, self.stops) | (i == self.last)
        return Step(out, self.done, logits)
