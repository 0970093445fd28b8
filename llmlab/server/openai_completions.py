"""The legacy `/v1/completions`: raw text (or token ids) in, a continuation out, with
`echo` and per-token `logprobs` over the prompt too. It is how lm-evaluation-harness's
`local-completions` scores a model: it sends context + continuation as token ids with
`echo=True, max_tokens=1, logprobs=1` and sums the continuation's `token_logprobs`."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from llmlab.generate.engine import make_params
from llmlab.generate.reply import Completion
from llmlab.generate.sampling import SEED_MAX, SEED_MIN
from llmlab.generate.score import prompt_logprobs
from llmlab.server.errors import ApiError, no_lone_surrogates, sse_error
from llmlab.server.hub import Hub
from llmlab.server.openai_common import (
    CHAT_IDS,
    MAX_N,
    check_budget,
    legacy_logprobs,
    merged,
    resolve_lm,
    score_lm,
    seeds,
    sse,
    stop_list,
    unless_gone,
)

MAX_PROMPTS = 32  # prompts per request (lm-eval batches several); each is a batch row


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(BaseModel):
    model: str = CHAT_IDS[0]
    # str | list[str] | list[int] | list[list[int]], checked by `_prompt` so that an error
    # names `prompt`, not one of the union's branches (`prompt.str`).
    prompt: Any
    max_tokens: int = Field(16, ge=0)  # 0: echo and score the prompt only
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=5)  # the legacy API's cap
    echo: bool = False
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        def ids(x: Any) -> bool:
            return isinstance(x, list) and bool(x) and all(
                isinstance(t, int) and not isinstance(t, bool) for t in x)

        ok = isinstance(v, str) or (isinstance(v, list) and bool(v) and (
            all(isinstance(x, str) for x in v) or ids(v) or all(ids(x) for x in v)))
        if not ok:
            raise ValueError("expected a string, a list of strings, a list of token ids or a "
                             "list of token-id lists (none of them empty)")
        return v

    @field_validator("prompt", "stop")
    @classmethod
    def _texts(cls, v: Any) -> Any:
        for s in [v] if isinstance(v, str) else (v or []):
            if isinstance(s, str):
                no_lone_surrogates(s)
        return v


def _prompts(req: CompletionRequest, lm: Any, hub: Hub) -> list[tuple[str, list[int]]]:
    """Each prompt as (text, token ids), checked against the model and the server's caps."""
    tok, cfg = lm.tokenizer, lm.cfg
    p = req.prompt
    raw: list[str | list[int]] = [p] if isinstance(p, str) else list(p)
    if raw and isinstance(raw[0], int):
        raw = [list(p)]  # type: ignore[arg-type]  # one prompt of token ids
    if not 1 <= len(raw) <= MAX_PROMPTS:
        raise ApiError(400, f"prompt: 1 to {MAX_PROMPTS} prompts, got {len(raw)}", "prompt")
    if len(raw) * req.n > 2 * MAX_PROMPTS:
        raise ApiError(400, f"n: prompts x n is at most {2 * MAX_PROMPTS}", "n")
    chars = sum(len(x) for x in raw if isinstance(x, str))
    if chars > 16 * hub.cfg.max_text_chars:
        raise ApiError(400, f"prompt: {chars} characters; at most "
                       f"{16 * hub.cfg.max_text_chars}", "prompt")
    out = []
    for i, x in enumerate(raw):
        if isinstance(x, str):
            # A raw prompt is the user's whole input: special tokens in it are parsed, as in
            # vLLM and llama.cpp, so ChatML written by hand works.
            ids = tok.encode(x, allowed_special="all")
            text = x
        else:
            if any(not 0 <= t < cfg.vocab_size for t in x):
                raise ApiError(400, f"prompt: token ids must be in [0, {cfg.vocab_size})",
                               "prompt")
            ids, text = list(x), tok.decode(x)
        if not ids:
            raise ApiError(400, f"prompt: prompt {i} is empty; at least one token is needed",
                           "prompt")
        if len(ids) + req.max_tokens > cfg.max_seq_len:
            raise ApiError(400, f"prompt: prompt {i} has {len(ids)} tokens; with max_tokens="
                           f"{req.max_tokens} at most {cfg.max_seq_len} fit", "prompt")
        out.append((text, ids))
    return out


def make_router(hub: Hub) -> APIRouter:
    router = APIRouter()

    def prepare(req: CompletionRequest) -> tuple[Any, list[tuple[str, list[int]]], list]:
        lm = resolve_lm(hub, req.model)
        check_budget(req.max_tokens, "max_tokens", hub)
        stop = stop_list(req.stop)
        prompts = _prompts(req, lm, hub)
        params = [make_params(lm.tokenizer, max_new_tokens=req.max_tokens,
                              temperature=req.temperature, top_p=req.top_p, stop=stop,
                              seed=s, logprobs=req.logprobs) for s in seeds(req.seed, req.n)]
        return lm, prompts, params

    def score(req: CompletionRequest, prompts: list[tuple[str, list[int]]]) -> list[list]:
        """The prompts' own logprobs (echo + logprobs): one forward pass each."""
        if not (req.echo and req.logprobs is not None):
            return [[] for _ in prompts]
        m = score_lm(hub, req.model).model
        return [hub.run(prompt_logprobs, m, ids, req.logprobs) for _, ids in prompts]

    def choice_logprobs(lm: Any, req: CompletionRequest, ids: list[int], plp: list,
                        out: Completion) -> dict[str, Any] | None:
        if req.logprobs is None:
            return None
        gen_ids, gen_lp = list(out.token_ids), list(out.logprobs or [])
        if out.stop_token is not None and out.stop_logprob is not None:
            # The stop token was chosen and scored too: lm-eval's `[ctxlen:-1]` counts on
            # max_tokens=1 giving exactly one generated entry, even when it is the EOS.
            gen_ids.append(out.stop_token)
            gen_lp.append(out.stop_logprob)
        if req.echo:
            return legacy_logprobs(lm.tokenizer, ids + gen_ids, plp + gen_lp)
        return legacy_logprobs(lm.tokenizer, gen_ids, gen_lp)

    @router.post("/completions", response_model=None)
    async def completions(req: CompletionRequest, request: Request) -> Any:
        lm, prompts, params = await run_in_threadpool(prepare, req)
        own = req.model.startswith("run:")
        batcher = await run_in_threadpool(hub.batcher, req.model if own else None)
        plps = await run_in_threadpool(score, req, prompts)
        base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
                "created": int(time.time()), "model": req.model if own else CHAT_IDS[0]}
        n_prompt = sum(len(ids) for _, ids in prompts)
        if req.stream:
            return StreamingResponse(
                stream(req, lm, batcher, prompts, params, plps, base, n_prompt),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        handles = [batcher.submit(ids, p) for _, ids in prompts for p in params]
        outs = await unless_gone(request, handles)
        if outs is None:  # nobody is listening; 499 is nginx's "client closed request"
            return Response(status_code=499)
        choices = []
        for k, out in enumerate(outs):
            text, ids = prompts[k // req.n]
            choices.append({
                "index": k, "text": (text if req.echo else "") + out.text,
                "logprobs": choice_logprobs(lm, req, ids, plps[k // req.n], out),
                "finish_reason": out.finish_reason})
        done = sum(len(o.token_ids) for o in outs)
        return {**base, "choices": choices, "usage": {
            "prompt_tokens": n_prompt, "completion_tokens": done,
            "total_tokens": n_prompt + done}}

    async def stream(req: CompletionRequest, lm: Any, batcher: Any, prompts: list,
                     params: list, plps: list, base: dict, n_prompt: int) -> AsyncIterator[str]:
        usage = req.stream_options is not None and req.stream_options.include_usage
        extra = {"usage": None} if usage else {}

        def chunk(k: int, text: str, lp: Any, finish: str | None = None) -> str:
            return sse({**base, "choices": [{"index": k, "text": text, "logprobs": lp,
                                             "finish_reason": finish}], **extra})

        shown = [0] * (len(prompts) * req.n)  # characters sent per choice (text_offset)
        if req.echo:
            for k in range(len(shown)):
                text, ids = prompts[k // req.n]
                lp = (legacy_logprobs(lm.tokenizer, ids, plps[k // req.n])
                      if req.logprobs is not None else None)
                yield chunk(k, text, lp)
                shown[k] = len(text)
        handles = []
        try:
            # Submitted here, so a response that never starts never decodes.
            handles = [batcher.submit(ids, p) for _, ids in prompts for p in params]
            async for k, piece in merged(handles):
                if piece is None:
                    continue
                lp = None
                if req.logprobs is not None:
                    lps = getattr(piece, "logprobs", None) or []
                    lp = legacy_logprobs(lm.tokenizer, [x.token for x in lps], lps, shown[k])
                yield chunk(k, piece, lp)
                shown[k] += len(piece)
        except Exception as e:  # the 200 is sent: report it in the stream, as OpenAI does
            yield sse(sse_error(e))
            return
        for k, h in enumerate(handles):
            out = h.result
            lp = None
            if req.logprobs is not None and out.stop_logprob is not None:
                lp = legacy_logprobs(lm.tokenizer, [out.stop_token], [out.stop_logprob],
                                     shown[k])
            yield chunk(k, "", lp, out.finish_reason)
        if usage:
            done = sum(len(h.result.token_ids) for h in handles)
            yield sse({**base, "choices": [], "usage": {
                "prompt_tokens": n_prompt, "completion_tokens": done,
                "total_tokens": n_prompt + done}})
        yield "data: [DONE]\n\n"

    return router
