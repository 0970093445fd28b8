"""What the OpenAI-compatible endpoints share: the model a request names, its limits, the
logprobs in the spec's two shapes (chat's `content` list, the legacy completions' arrays),
and the plumbing of handles (a client that leaves cancels its requests)."""

from __future__ import annotations

import asyncio
import codecs
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from llmlab.generate.handle import Handle
from llmlab.generate.logprobs import TokenLogprob
from llmlab.generate.sampling import SEED_MAX, SEED_MIN
from llmlab.server.errors import ApiError, client_gone
from llmlab.server.hub import Hub

CHAT_IDS = ("smollm2-135m-instruct", "smollm2")
MAX_N = 8  # choices per request: each is a batch row


def run_models(hub: Hub) -> list[str]:
    return [r["model"] for r in hub.runs().list()
            if r["model"] and r["kind"] in ("sft", "dpo", "ppo", "grpo")]


def resolve_lm(hub: Hub, name: str) -> Any:
    """The generating model a request names: the bundled chat model or a playground run."""
    own = name.startswith("run:")
    if name not in CHAT_IDS and not own:
        raise ApiError(404, f"model: {name!r} not found; try {CHAT_IDS[0]!r} or one "
                       f"of your runs {run_models(hub)}", "model")
    try:
        lm = hub.attention_model(name) if own else hub.gen_lm()
    except ValueError as e:
        raise ApiError(404, str(e), "model") from None
    if lm.kind != "causal-lm":
        raise ApiError(400, f"model: {name!r} is not a causal language model", "model")
    return lm


def score_lm(hub: Hub, name: str) -> Any:
    """The model prompt logprobs come from: fp32 (hub.lm, not the int8 copy that may
    generate), so they equal transformers' on the HF export."""
    return hub.attention_model(name) if name.startswith("run:") else hub.lm()


def stop_list(stop: str | list[str] | None) -> list[str]:
    out = [stop] if isinstance(stop, str) else list(stop or [])
    if len(out) > 4 or any(not s or len(s) > 64 for s in out):
        raise ApiError(400, "stop: up to 4 non-empty strings of at most 64 chars", "stop")
    return out


def check_budget(value: int, field: str, hub: Hub) -> int:
    """A token budget within the server's cap; the error names the field the user sent."""
    limit = hub.cfg.max_new_tokens
    if value > limit:
        raise ApiError(400, f"{field}: at most {limit} on this server", field)
    return value


def seeds(seed: int | None, n: int) -> list[int | None]:
    """One seed per choice: seed, seed + 1, ... (wrapped into torch's range), so a seeded
    request with n > 1 is reproducible and its choices still differ."""
    if seed is None:
        return [None] * n
    span = SEED_MAX - SEED_MIN + 1
    return [(seed + i - SEED_MIN) % span + SEED_MIN for i in range(n)]


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def unless_gone(request: Request, handles: list[Handle]) -> list[Any] | None:
    """The handles' Completions, or None when the client left first: then they are
    cancelled, so an abandoned non-streamed request frees its batch slots at the next step."""
    done = asyncio.ensure_future(asyncio.gather(*(h.atext() for h in handles)))
    gone = asyncio.ensure_future(client_gone(request))
    try:
        await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not done.done():
            for h in handles:
                h.cancel()
            done.cancel()
    return list(done.result()) if done.done() and not done.cancelled() else None


async def merged(handles: list[Handle]) -> AsyncIterator[tuple[int, str | None]]:
    """(choice index, piece) as pieces arrive from several handles; (i, None) when choice i
    has finished. Leaving early (or an error in one) cancels them all."""
    q: asyncio.Queue[tuple[int, str | None, BaseException | None]] = asyncio.Queue()

    async def pump(i: int, h: Handle) -> None:
        try:
            async for piece in h:
                await q.put((i, piece, None))
            await q.put((i, None, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises
            await q.put((i, None, e))

    tasks = [asyncio.ensure_future(pump(i, h)) for i, h in enumerate(handles)]
    try:
        left = len(handles)
        while left:
            i, piece, err = await q.get()
            if err is not None:
                raise err
            if piece is None:
                left -= 1
            yield i, piece
    finally:
        for t in tasks:
            t.cancel()
        for h in handles:
            h.cancel()


# -- logprobs in the spec's shapes -------------------------------------------------------


def token_text(tok: Any, token_id: int) -> tuple[str, list[int]]:
    """A token's text (bytes that are not whole UTF-8 characters read as U+FFFD) and bytes."""
    b = tok.decode_bytes([token_id])
    return b.decode("utf-8", errors="replace"), list(b)


def chat_logprobs(tok: Any, lps: list[TokenLogprob]) -> list[dict[str, Any]]:
    """Chat's `logprobs.content`: one entry per token, with its top alternatives."""
    out = []
    for lp in lps:
        text, raw = token_text(tok, lp.token)
        top = []
        for i, v in lp.top:
            t, b = token_text(tok, i)
            top.append({"token": t, "logprob": v, "bytes": b})
        out.append({"token": text, "logprob": lp.logprob, "bytes": raw, "top_logprobs": top})
    return out


def legacy_logprobs(tok: Any, ids: list[int], lps: list[TokenLogprob | None],
                    offset: int = 0) -> dict[str, Any]:
    """The legacy completions' `logprobs`: parallel arrays over `ids`; `text_offset` counts
    characters from the start of the choice's text (`offset` for a continuation)."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tokens, offsets, chosen, tops = [], [], [], []
    pos = offset
    for t, lp in zip(ids, lps, strict=True):
        offsets.append(pos)
        pos += len(dec.decode(tok.decode_bytes([t])))
        tokens.append(token_text(tok, t)[0])
        chosen.append(None if lp is None else lp.logprob)
        top: dict[str, float] | None = None
        if lp is not None:  # two ids can share a text: keep the likelier (listed first)
            top = {}
            for i, v in lp.top:
                top.setdefault(token_text(tok, i)[0], v)
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": chosen, "top_logprobs": tops,
            "text_offset": offsets}
