"""Batched generation for evaluation, and the sliding-window perplexity scorer."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from llmlab.generate.chat import encode_prompts
from llmlab.generate.engine import complete, make_params


def generate(
    lm: Any,
    prompts: list[str],
    *,
    chat: bool = True,
    system: str | None = None,
    prefill: str = "",
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    stop: list[str] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "generate",
) -> list[str]:
    """Completions for `prompts`, in order, `batch_size` rows per decode.

    `prefill` starts each chat reply (it is not part of the returned text).
    Prompts are sorted by length before batching so a batch pads little; every batch gets its
    own seed derived from `seed` and its index, so results don't depend on what ran before.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = encode_prompts(lm, prompts, chat, system, prefill)
    stops = list(stop or [])
    template_end = "<|im_end|>"
    if chat and template_end not in stops:
        stops.append(template_end)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(ids)
    bar = tqdm(total=len(ids), desc=desc, unit="prompt", disable=not progress)
    for b, start in enumerate(range(0, len(order), batch_size)):
        rows = order[start : start + batch_size]
        params = make_params(
            lm.tokenizer,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            stop=stops,
            seed=seed * 100_003 + b,
        )
        done = complete(lm.model, lm.tokenizer, [ids[i] for i in rows], params, truncate=True)
        for i, c in zip(rows, done, strict=True):
            out[i] = c.text
        bar.update(len(rows))
    bar.close()
    return out


@torch.inference_mode()
def sliding_nll(
    model: Any, ids: list[int], window: int, stride: int, progress: bool = False
) -> tuple[float, int]:
    """(sum of token NLLs in nats, number of tokens scored) over `ids`.

    Windows of `window` tokens advance by `stride`; each window scores only the tokens no
    earlier window scored, with the rest as context (the transformers perplexity recipe), so
    every token after the first is scored exactly once.
    """
    if window < 2:
        raise ValueError(f"perplexity window must be >= 2 tokens, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"perplexity stride must be in [1, window={window}], got {stride}")
    if len(ids) < 2:
        raise ValueError(f"perplexity needs at least 2 tokens of text, got {len(ids)}")
    dev = next(model.parameters()).device
    total, count, prev_end = 0.0, 0, 0
    starts = list(range(0, len(ids), stride))
    for begin in tqdm(starts, desc="perplexity", unit="window", disable=not progress):
        end = min(begin + window, len(ids))
        new = end - max(prev_end, begin + 1)  # tokens not yet scored (the first has no context)
        if new > 0:
            x = torch.tensor([ids[begin:end]], device=dev)
            logits = model(x).logits[0, :-1].float()
            tgt = x[0, 1:]
            nll = F.cross_entropy(logits[-new:], tgt[-new:], reduction="sum")
            total += float(nll)
            count += new
        prev_end = end
        if end == len(ids):
            break
    return total, count


def perplexity_report(nll: float, count: int, n_bytes: int) -> dict[str, float]:
    mean = nll / count
    return {
        "nll": mean,
        "perplexity": math.exp(mean),
        "bits_per_byte": nll / (math.log(2) * n_bytes),
        "tokens": count,
        "bytes": n_bytes,
    }
