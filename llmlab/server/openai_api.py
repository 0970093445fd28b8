"""OpenAI-compatible endpoints: /v1/models, /v1/chat/completions (+SSE), /v1/embeddings;
/v1/completions and /v1/responses live in their own modules and join this router."""

from __future__ import annotations

import base64
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
from llmlab.server import openai_completions, openai_responses
from llmlab.server.errors import ApiError, no_lone_surrogates, sse_error
from llmlab.server.hub import Hub
from llmlab.server.openai_common import (
    CHAT_IDS,
    MAX_N,
    chat_logprobs,
    check_budget,
    merged,
    resolve_lm,
    run_models,
    seeds,
    stop_list,
    unless_gone,
)
from llmlab.server.openai_common import sse as _sse
from llmlab.server.structured import (
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
    plan,
    render_history,
    tool_reply,
)

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


class StreamOptions(BaseModel):
    include_usage: bool = False


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
    n: int = Field(1, ge=1, le=MAX_N)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream_options: StreamOptions | None = None
    # OpenAI fields this server does not implement, accepted only at their no-op values: a
    # request that relies on one gets a 400 naming it, not an answer silently without it.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

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
                  for m in run_models(hub)),
            ],
        }

    def prepare(req: ChatRequest) -> tuple[Any, list[int], list[Any], bool]:
        """The model, the prompt ids and one SamplingParams per choice for a chat request,
        and whether its reply may be a tool call."""
        total = sum(len(m.text()) for m in req.messages)
        if total > 4 * hub.cfg.max_text_chars:
            raise ApiError(
                400,
                f"messages: {total} characters; at most {4 * hub.cfg.max_text_chars}",
                "messages",
            )
        # Errors name the field the user sent: the newer max_completion_tokens wins.
        lm = resolve_lm(hub, req.model)
        field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        # Unset, the budget is the server's cap (at most 256): a default is never an error.
        asked = req.max_completion_tokens or req.max_tokens
        max_new = check_budget(asked or min(256, hub.cfg.max_new_tokens), field, hub)
        stop = stop_list(req.stop)
        for name in ("frequency_penalty", "presence_penalty", "logit_bias"):
            if getattr(req, name):
                raise ApiError(400, f"{name}: not supported by this server (send 0 or leave "
                               "it out)", name)
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs: needs logprobs=true", "top_logprobs")
        for i, m in enumerate(req.messages):
            if m.content is None and not (m.role == "assistant" and m.tool_calls):
                raise ApiError(400, f"messages.{i}.content: required for a {m.role} message "
                               "(only an assistant message with tool_calls may omit it)",
                               f"messages.{i}.content")
            if m.role == "tool" and not m.tool_call_id:
                raise ApiError(400, f"messages.{i}.tool_call_id: required for a tool message",
                               f"messages.{i}.tool_call_id")
        structure = plan(req.response_format, req.tools, req.tool_choice)
        msgs = render_history(req.messages)
        tpl = template_for(lm)
        system = None
        if structure.system:  # after the conversation's own system text
            own = next((m["content"] for m in msgs if m["role"] == "system"), None)
            system = f"{own}\n\n{structure.system}" if own else structure.system
        # Message text stays plain text: a "<|im_end|>" typed by a user can't forge a turn.
        ids = tpl.encode(lm.tokenizer, msgs, system)
        k = (req.top_logprobs or 0) if req.logprobs else None
        params = [make_params(lm.tokenizer, max_new_tokens=max_new, temperature=req.temperature,
                              top_p=req.top_p, stop=[*stop, *tpl.stop], seed=s, logprobs=k,
                              constraint=structure.constraint)
                  for s in seeds(req.seed, req.n)]  # one per choice
        ids = fit_context([ids], max_new, lm.cfg.max_seq_len, False)[0]
        if structure.constraint is not None:  # compiled here, off the event loop (then cached)
            compiled(params[0].constraint, lm.cfg.vocab_size)
        return lm, ids, params, structure.tools

    @router.post("/chat/completions", response_model=None)
    async def chat_completions(req: ChatRequest, request: Request) -> Any:
        # Validation and tokenising may load the model: off the event loop.
        lm, ids, params, tools = await run_in_threadpool(prepare, req)
        own = req.model.startswith("run:")
        batcher = await run_in_threadpool(hub.batcher, req.model if own else None)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        base = {"id": cid, "created": int(time.time()), "model": req.model if own else CHAT_IDS[0]}
        usage_chunk = req.stream_options is not None and req.stream_options.include_usage
        if req.stream and not tools:  # constrained or not, the real tokens as they come
            return StreamingResponse(
                stream(batcher, lm.tokenizer, ids, params, base, usage_chunk),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        outs = await unless_gone(request, [batcher.submit(ids, p) for p in params])
        if outs is None:  # nobody is listening; 499 is nginx's "client closed request"
            return Response(status_code=499)
        done = sum(len(o.token_ids) for o in outs)
        usage = {"prompt_tokens": len(ids), "completion_tokens": done,
                 "total_tokens": len(ids) + done}
        choices = []
        for i, out in enumerate(outs):
            calls, text = tool_reply(out.text) if tools else (None, out.text)
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = calls
            lp = None
            if out.logprobs is not None:
                lp = {"content": chat_logprobs(lm.tokenizer, out.logprobs), "refusal": None}
            choices.append({"index": i, "finish_reason": "tool_calls" if calls else
                            out.finish_reason, "logprobs": lp, "message": message})
        if req.stream:  # a tool call is sent whole, once it parses, as one delta
            return StreamingResponse(_one_chunk(base, choices, usage if usage_chunk else None),
                                     media_type="text/event-stream")
        return {**base, "object": "chat.completion", "choices": choices, "usage": usage}

    async def stream(batcher: Any, tok: Any, ids: list[int], params: list[Any], base: dict,
                     usage: bool) -> AsyncIterator[str]:
        chunk = {**base, "object": "chat.completion.chunk", **({"usage": None} if usage else {})}

        def one(i: int, delta: dict, finish: str | None = None, lp: Any = None) -> str:
            c = {"index": i, "delta": delta, "finish_reason": finish}
            if lp is not None:
                c["logprobs"] = lp
            return _sse({**chunk, "choices": [c]})

        for i in range(len(params)):
            yield one(i, {"role": "assistant", "content": ""})
        # Submitted here, not in the endpoint, so a response that never starts never decodes;
        # a client that leaves mid-stream cancels it (its batch slot frees at the next step).
        handles = []
        try:
            handles = [batcher.submit(ids, p) for p in params]
            async for i, piece in merged(handles):
                if piece is None:  # choice i has finished
                    yield one(i, {}, handles[i].result.finish_reason)
                    continue
                lps = getattr(piece, "logprobs", None)
                lp = None if lps is None else {"content": chat_logprobs(tok, lps),
                                               "refusal": None}
                yield one(i, {"content": piece}, None, lp)
        except Exception as e:  # the 200 is sent: report it in the stream, as OpenAI does
            yield _sse(sse_error(e))
            return
        if usage:  # stream_options.include_usage: a last chunk with no choices
            done = sum(len(h.result.token_ids) for h in handles)
            yield _sse({**chunk, "choices": [], "usage": {
                "prompt_tokens": len(ids), "completion_tokens": done,
                "total_tokens": len(ids) + done}})
        yield "data: [DONE]\n\n"

    def _one_chunk(base: dict, choices: list[dict], usage: dict | None) -> Iterator[str]:
        chunk = {**base, "object": "chat.completion.chunk"}
        for c in choices:
            delta = dict(c["message"])
            if "tool_calls" in delta:  # in a chunk each call carries its index
                delta["tool_calls"] = [{"index": i, **t} for i, t in enumerate(delta["tool_calls"])]
            yield _sse({**chunk, "choices": [{"index": c["index"], "delta": delta,
                                              "logprobs": c["logprobs"], "finish_reason": None}]})
            yield _sse({**chunk, "choices": [{"index": c["index"], "delta": {},
                                              "finish_reason": c["finish_reason"]}]})
        if usage is not None:
            yield _sse({**chunk, "choices": [], "usage": usage})
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

    router.include_router(openai_completions.make_router(hub))
    router.include_router(openai_responses.make_router(hub, prepare, ChatRequest))
    return router
