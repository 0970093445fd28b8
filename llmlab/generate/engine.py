"""Batched KV-cache decoding with streaming.

Prompts of different lengths are left-padded into one batch; an attention mask hides the
padding and positions count from each row's first real token, so every row computes
exactly what it would alone. The cache is allocated once for prompt + new tokens, so the
past is never recomputed. `iter_decode` is that loop in full; where a faster decoder of the
same maths applies (generate/fast/: CUDA graphs, Triton, a lean CPU step), it runs instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch

from llmlab.generate.constrain import guide_for
from llmlab.generate.fast import pick_decoder
from llmlab.generate.logprobs import step_logprobs
from llmlab.generate.reply import Completion, Reply
from llmlab.generate.sampling import SamplingParams, Step, Stopper, sample, seen_tokens
from llmlab.model.cache import KVCache
from llmlab.model.transformer import Transformer


class ContextLengthError(ValueError):
    pass


def fit_context(
    prompts: list[list[int]], max_new_tokens: int, context: int, truncate: bool
) -> list[list[int]]:
    """Check prompt + new tokens fit; left-truncate the prompt only when asked to."""
    budget = context - max_new_tokens
    if budget <= 0:
        raise ContextLengthError(
            f"max_new_tokens={max_new_tokens} leaves no room in the {context}-token context"
        )
    out = []
    for i, p in enumerate(prompts):
        if len(p) > budget:
            if not truncate:
                raise ContextLengthError(
                    f"prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} "
                    f"only {budget} fit in the {context}-token context "
                    "(shorten it, lower max_new_tokens, or pass truncate=True / --truncate)"
                )
            p = p[-budget:]
        if not p:
            raise ValueError(f"prompt {i} is empty: a model needs at least one token to continue")
        out.append(p)
    return out


def left_pad(prompts: list[list[int]], pad_id: int, new: int,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) ids with each prompt right-aligned, and the (B, T + new) attention mask that
    hides the padding (None when no row is padded)."""
    lens = [len(p) for p in prompts]
    t0 = max(lens)
    ids = torch.full((len(prompts), t0), pad_id, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, t0 - len(p):] = torch.tensor(p, dtype=torch.long)
    if min(lens) == t0:
        return ids, None
    mask = torch.ones(len(prompts), t0 + new, dtype=torch.long, device=device)
    mask[:, :t0] = torch.arange(t0, device=device)[None] >= t0 - torch.tensor(lens,
                                                                         device=device)[:, None]
    return ids, mask


def forward(model: Transformer, x: torch.Tensor, cache: KVCache,
            mask: torch.Tensor | None) -> torch.Tensor:
    """(B, V) logits for the token after `x`, whose keys and values join the cache."""
    am = mask[:, : cache.length + x.shape[1]] if mask is not None else None
    return model(x, attention_mask=am, cache=cache, last_only=True).logits[:, -1]


@torch.inference_mode()
def iter_decode(
    model: Transformer,
    prompts: list[list[int]],
    params: SamplingParams,
    pad_id: int = 0,
    return_logits: bool = False,
    n: int = 1,
) -> Iterator[Step]:
    """Yield one Step per new token, for `n` samples of each prompt (rows i*n .. i*n+n-1 are
    prompt i's). Rows finish independently; the loop ends when all have."""
    params.validate()
    if n < 1:
        raise ValueError(f"n (samples per prompt) must be >= 1, got {n}")
    if params.max_new_tokens == 0:
        return
    rows = [p for p in prompts for _ in range(n)]
    fast = pick_decoder(model, rows, params, return_logits)
    if fast is not None:  # the same tokens by a faster route (generate/fast/)
        yield from fast.generate(rows, params, pad_id)
        return
    dev = model.device
    ids, mask = left_pad(prompts, pad_id, params.max_new_tokens, dev)
    # Under autocast the keys/values come out in the autocast dtype: store them so.
    kv_dtype = (torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type)
                else model.dtype)
    cache = KVCache(model.cfg, len(prompts), ids.shape[1] + params.max_new_tokens, dev, kv_dtype)
    gen = torch.Generator(device=dev).manual_seed(params.seed) if params.seed is not None else None
    seen = seen_tokens(rows, model.cfg.vocab_size, dev) if params.repetition_penalty != 1 else None
    stopper = Stopper(params, len(rows), dev, pad_id)
    guide = guide_for(params, len(rows), model.cfg.vocab_size)

    logits = forward(model, ids, cache, mask)  # the prefill: every prompt token at once
    if n > 1:  # each prompt prefilled once; its samples continue from copies of its cache row
        cache.repeat_rows(n)
        logits = logits.repeat_interleave(n, 0)
        mask = mask.repeat_interleave(n, 0) if mask is not None else None
    for i in range(params.max_new_tokens):
        raw = logits
        if guide is not None:  # a grammar: tokens that can't continue a valid output at -inf
            logits = guide.mask(logits)
        nxt = sample(logits, params, gen, seen)
        if guide is not None:
            guide.advance(nxt)
        if seen is not None:
            seen[torch.arange(len(rows), device=dev), nxt] = True
        step = stopper.step(i, nxt, raw if return_logits else None)
        yield step
        if bool(step.done.all()):
            return
        logits = forward(model, nxt[:, None], cache, mask)  # one token per row


def bind_constraint(params: SamplingParams, tokenizer: Any) -> SamplingParams:
    """`params` with its constraint tied to `tokenizer`'s vocabulary."""
    if params.constraint is None or params.constraint.tokenizer is tokenizer:
        return params
    return replace(params, constraint=params.constraint.bind(tokenizer))


def stream_batch(
    model: Transformer, tokenizer: Any, prompts: list[list[int]], params: SamplingParams
) -> Iterator[tuple[int, str]]:
    """Yield (row, text piece) as tokens arrive; stop strings end a row early."""
    params = bind_constraint(params, tokenizer)
    replies = [Reply(tokenizer, params, len(p)) for p in prompts]
    for step in iter_decode(model, prompts, params, pad_id=_pad(tokenizer)):
        for i, (r, t) in enumerate(zip(replies, step.tokens.tolist(), strict=True)):
            piece = "" if r.done else r.add(t)
            if piece:
                yield i, piece
        if all(r.done for r in replies):
            break
    for i, r in enumerate(replies):
        _, piece = r.finish()
        if piece:
            yield i, piece


def _pad(tokenizer: Any) -> int:
    for name in ("pad_id", "eos_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            return int(v)
    return 0


def complete(
    model: Transformer,
    tokenizer: Any,
    prompts: list[list[int]],
    params: SamplingParams,
    truncate: bool = False,
    n: int = 1,
) -> list[Completion]:
    """Batched generation to finished Completions (text with stop strings cut). With `n`,
    n samples of each prompt (consecutive), from one prefill of it (like OpenAI's `n`)."""
    prompts = fit_context(prompts, params.max_new_tokens, model.cfg.max_seq_len, truncate)
    params = bind_constraint(params, tokenizer)
    replies = [Reply(tokenizer, params, len(p)) for p in prompts for _ in range(n)]
    want_lp = params.logprobs is not None  # only then are the step's logits kept
    for step in iter_decode(model, prompts, params, pad_id=_pad(tokenizer), n=n,
                            return_logits=want_lp):
        toks = step.tokens.tolist()  # one device-to-host copy per step, not one per row
        lps: list[Any] = [None] * len(toks)
        if want_lp:
            assert step.logits is not None and params.logprobs is not None
            lps = step_logprobs(step.logits, step.tokens, params.logprobs)
        for r, t, lp in zip(replies, toks, lps, strict=True):
            if not r.done:
                r.add(t, lp)
        if all(r.done for r in replies):
            break
    return [r.finish()[0] for r in replies]


def make_params(tokenizer: Any, **kw: Any) -> SamplingParams:
    """SamplingParams with the tokenizer's EOS added to the stop tokens."""
    params = SamplingParams(**kw)
    eos = getattr(tokenizer, "eos_id", None)
    if eos is not None and eos not in params.stop_token_ids:
        params.stop_token_ids = [*params.stop_token_ids, int(eos)]
    params = bind_constraint(params, tokenizer)
    params.validate()
    return params
