"""OpenAI-compatible endpoints: /v1/models, /v1/chat/completions (+SSE), /v1/embeddings."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from llmlab.generate.chat import template_for
from llmlab.generate.constrain import compiled
from llmlab.generate.engine import fit_context, make_params
from llmlab.generate.sampling import SEED_MAX, SEED_MIN
from llmlab.server.errors import ApiError, client_gone, no_lone_surrogates, sse_error
from llmlab.server.hub import Hub
from llmlab.server.structured import (
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
    plan,
    render_history,
    tool_reply,
)

CHAT_IDS = ("smollm2-135m-instruct", "smollm2")
EMBED_TOKENS = 512  # tokens embedded per hold of the model lock
EMBED_TOTAL = 16  # an embeddings request's characters, in all, in units of max_text_chars
EMBED_IDS = ("minilm-l6-v2", "minilm", "all-MiniLM-L6-v2")


def _clean_texts(v: Any) -> Any:
    """A union field's strings checked after validation, not on the union's str branch, so
    an error names the field (`messages.0.content`), not the branch (`....content.str`)."""
    if isinstance(v, str):
        no_lone_surrogates(v)
    elif isinstance(v, list):
        for x in v:
            no_lone_surrogates(x.text if isinstance(x, TextPart) else x)
    return v


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None  # None: an assistant turn of tool_calls only
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _content(cls, v: str | list[TextPart] | None) -> str | list[TextPart] | None:
        return _clean_texts(v)

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(p.text for p in self.content)


class ChatRequest(BaseModel):
    model: str = "smollm2-135m-instruct"
    messages: list[Message] = Field(min_length=1, max_length=64)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, min_length=1, max_length=32)
    tool_choice: ToolChoice | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)  # what torch's generator takes
    n: int = Field(1, ge=1, le=1)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        return _clean_texts(v)


class EmbeddingRequest(BaseModel):
    model: str = "minilm-l6-v2"
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"

    @field_validator("input")
    @classmethod
    def _input(cls, v: str | list[str]) -> str | list[str]:
        return _clean_texts(v)


async def _unless_gone(request: Request, handle: Any) -> Any:
    """The handle's Completion, or None when the client left first: then the request is
    cancelled, so an abandoned non-streamed chat frees its batch slot at the next step."""
    done = asyncio.ensure_future(handle.atext())
    gone = asyncio.ensure_future(client_gone(request))
    try:
        await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not done.done():
            handle.cancel()
            done.cancel()
    return done.result() if done.done() and not done.cancelled() else None


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def make_router(hub: Hub) -> APIRouter:
    router = APIRouter(prefix="/v1")
    created = int(time.time())

    @router.get("/models")
    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": CHAT_IDS[0], "object": "model", "created": created, "owned_by": "llmlab"},
                {"id": EMBED_IDS[0], "object": "model", "created": created, "owned_by": "llmlab"},
                *({"id": m, "object": "model", "created": created, "owned_by": "user"}
                  for m in run_models()),
            ],
        }

    def run_models() -> list[str]:
        return [r["model"] for r in hub.runs().list()
                if r["model"] and r["kind"] in ("sft", "dpo", "ppo", "grpo")]

    def prepare(req: ChatRequest) -> tuple[Any, list[int], Any, bool]:
        """The model, prompt ids and SamplingParams for a chat request, and whether its
        reply may be a tool call."""
        own = req.model.startswith("run:")  # a model trained in the playground
        if req.model not in CHAT_IDS and not own:
            raise ApiError(404, f"model: {req.model!r} not found; try {CHAT_IDS[0]!r} or one "
                           f"of your runs {run_models()}", "model")
        total = sum(len(m.text()) for m in req.messages)
        if total > 4 * hub.cfg.max_text_chars:
            raise ApiError(
                400,
                f"messages: {total} characters; at most {4 * hub.cfg.max_text_chars}",
                "messages",
            )
        limit = hub.cfg.max_new_tokens
        max_new = req.max_completion_tokens or req.max_tokens or 256
        if max_new > limit:
            raise ApiError(400, f"max_tokens: at most {limit} on this server", "max_tokens")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4 or any(not s or len(s) > 64 for s in stop):
            raise ApiError(400, "stop: up to 4 non-empty strings of at most 64 chars", "stop")
        for i, m in enumerate(req.messages):
            if m.content is None and not (m.role == "assistant" and m.tool_calls):
                raise ApiError(400, f"messages.{i}.content: required for a {m.role} message "
                               "(only an assistant message with tool_calls may omit it)",
                               f"messages.{i}.content")
            if m.role == "tool" and not m.tool_call_id:
                raise ApiError(400, f"messages.{i}.tool_call_id: required for a tool message",
                               f"messages.{i}.tool_call_id")
        structure = plan(req.response_format, req.tools, req.tool_choice)
        try:
            lm = hub.attention_model(req.model) if own else hub.gen_lm()
        except ValueError as e:
            raise ApiError(404, str(e), "model") from None
        if lm.kind != "causal-lm":
            raise ApiError(400, f"model: {req.model!r} is not a causal language model", "model")
        msgs = render_history(req.messages)
        tpl = template_for(lm)
        system = None
        if structure.system:  # after the conversation's own system text
            own = next((m["content"] for m in msgs if m["role"] == "system"), None)
            system = f"{own}\n\n{structure.system}" if own else structure.system
        # Message text stays plain text: a "<|im_end|>" typed by a user can't forge a turn.
        ids = tpl.encode(lm.tokenizer, msgs, system)
        params = make_params(
            lm.tokenizer,
            max_new_tokens=max_new,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=[*stop, *tpl.stop],
            seed=req.seed,
            constraint=structure.constraint,
        )
        ids = fit_context([ids], params.max_new_tokens, lm.cfg.max_seq_len, False)[0]
        if params.constraint is not None:  # compiled here, off the event loop (then cached)
            compiled(params.constraint, lm.cfg.vocab_size)
        return lm, ids, params, structure.tools

    @router.post("/chat/completions", response_model=None)
    async def chat_completions(req: ChatRequest, request: Request) -> Any:
        # Validation and tokenising may load the model: off the event loop.
        lm, ids, params, tools = await run_in_threadpool(prepare, req)
        own = req.model.startswith("run:")
        batcher = await run_in_threadpool(hub.batcher, req.model if own else None)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        base = {"id": cid, "created": int(time.time()), "model": req.model if own else CHAT_IDS[0]}
        if req.stream and not tools:  # constrained or not, the real tokens as they come
            return StreamingResponse(
                stream(batcher, ids, params, base),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        out = await _unless_gone(request, batcher.submit(ids, params))
        if out is None:  # nobody is listening; 499 is nginx's "client closed request"
            return Response(status_code=499)
        calls, text = tool_reply(out.text) if tools else (None, out.text)
        finish = "tool_calls" if calls else out.finish_reason
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
        usage = {
            "prompt_tokens": len(ids),
            "completion_tokens": len(out.token_ids),
            "total_tokens": len(ids) + len(out.token_ids),
        }
        if req.stream:  # a tool call is sent whole, once it parses, as one delta
            return StreamingResponse(_one_chunk(base, message, finish),
                                     media_type="text/event-stream")
        return {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": finish,
                    "message": message,
                }
            ],
            "usage": usage,
        }

    async def stream(batcher: Any, ids: list[int], params: Any, base: dict) -> AsyncIterator[str]:
        chunk = {**base, "object": "chat.completion.chunk"}
        yield _sse(
            {
                **chunk,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            }
        )
        # Submitted here, not in the endpoint, so a response that never starts never decodes;
        # a client that leaves mid-stream cancels it (its batch slot frees at the next step).
        handle = None
        try:
            handle = batcher.submit(ids, params)
            async for piece in handle:
                yield _sse(
                    {
                        **chunk,
                        "choices": [
                            {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                        ],
                    }
                )
        except Exception as e:  # the 200 is sent: report it in the stream, as OpenAI does
            yield _sse(sse_error(e))
            return
        finally:
            if handle is not None:
                handle.cancel()
        finish = handle.result.finish_reason
        yield _sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        yield "data: [DONE]\n\n"

    def _one_chunk(base: dict, message: dict, finish: str) -> Iterator[str]:
        chunk = {**base, "object": "chat.completion.chunk"}
        yield _sse(
            {
                **chunk,
                "choices": [
                    {
                        "index": 0,
                        "delta": {**message, **({"tool_calls": [  # deltas carry an index
                            {"index": i, **c} for i, c in enumerate(message["tool_calls"])
                        ]} if "tool_calls" in message else {})},
                        "finish_reason": None,
                    }
                ],
            }
        )
        yield _sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        yield "data: [DONE]\n\n"

    @router.post("/embeddings")
    def embeddings(req: EmbeddingRequest) -> dict[str, Any]:
        if req.model not in EMBED_IDS:
            raise ApiError(404, f"model: {req.model!r} not found; try {EMBED_IDS[0]!r}", "model")
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        if not texts or len(texts) > 128:
            raise ApiError(400, "input: 1 to 128 strings", "input")
        if any(len(t) > hub.cfg.max_text_chars * 4 for t in texts):
            raise ApiError(400, f"input: each at most {hub.cfg.max_text_chars * 4} chars", "input")
        total, cap = sum(map(len, texts)), hub.cfg.max_text_chars * EMBED_TOTAL
        if total > cap:
            raise ApiError(400, f"input: {total} characters in all; at most {cap}", "input")
        enc = hub.enc()
        lens = [len(enc.tokenizer.encode(t)) for t in texts]  # outside the model lock
        # At most EMBED_TOKENS tokens per hold of the model lock (tenths of a second on a
        # busy CPU), shortest texts first (little padding): decoding steps run between the
        # chunks instead of waiting for the whole request.
        chunks: list[list[int]] = [[]]
        used = 0
        for i in sorted(range(len(texts)), key=lambda i: lens[i]):
            if chunks[-1] and used + lens[i] > EMBED_TOKENS:
                chunks.append([])
                used = 0
            chunks[-1].append(i)
            used += lens[i]
        vecs: list[Any] = [None] * len(texts)
        for idx in chunks:
            for i, v in zip(idx, hub.run(enc.embed, [texts[i] for i in idx]), strict=True):
                vecs[i] = v
        n_tok = sum(lens)
        data = []
        for i, v in enumerate(vecs):
            if req.encoding_format == "base64":  # what the official client asks for
                emb: Any = base64.b64encode(v.numpy().astype(np.float32).tobytes()).decode()
            else:
                emb = v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {
            "object": "list",
            "data": data,
            "model": EMBED_IDS[0],
            "usage": {"prompt_tokens": n_tok, "total_tokens": n_tok},
        }

    return router
