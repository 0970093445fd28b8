"""/v1/responses, the newer OpenAI API: `input` (a string or messages) and `instructions`
in, an `output` list holding one assistant message out, streamed as typed events
(`response.created` ... `response.output_text.delta` ... `response.completed`).

It is the chat path under another shape: the request becomes a ChatRequest and goes through
the chat endpoint's own `prepare` (template, limits, sampling), so both behave alike.
Structured output arrives through `text_format_to_response_format`, the one hook that maps
`text.format` to chat's `response_format`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool

from llmlab.server.errors import ApiError, sse_error
from llmlab.server.hub import Hub
from llmlab.server.openai_common import CHAT_IDS, unless_gone

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


class InputPart(BaseModel):
    type: Literal["input_text", "output_text"]  # output_text: an earlier assistant turn
    text: str


class InputMessage(BaseModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputPart]


class TextConfig(BaseModel):
    format: dict[str, Any] | None = None


class ResponsesRequest(BaseModel):
    model: str = CHAT_IDS[0]
    input: Any  # str | list[InputMessage], checked by `_input` (errors name `input`)
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    text: TextConfig | None = None


    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, v: Any) -> Any:
        if isinstance(v, str):
            return v
        if not isinstance(v, list) or not v:
            raise ValueError("expected a string or a non-empty list of messages")
        out = []
        for i, m in enumerate(v):
            try:
                out.append(InputMessage.model_validate(m))
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(str(x) for x in (i, *err["loc"]))
                raise ValueError(f"{where}: {err['msg']}") from None
        return out


def text_format_to_response_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """Responses' `text.format` as chat's `response_format`: `{"type": "json_schema", "name",
    "schema", "strict"}` moves its fields under `json_schema`; `json_object` and `text` are
    the same in both. Whether a format is supported is then the chat path's decision."""
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_schema":
        inner = {k: v for k, v in fmt.items() if k != "type"}
        return {"type": "json_schema", "json_schema": inner}
    return dict(fmt)


def to_chat(req: ResponsesRequest, chat_request: type[BaseModel]) -> Any:
    """The chat request this one amounts to; its errors name the Responses fields."""
    msgs = []
    if req.instructions:
        msgs.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        msgs.append({"role": "user", "content": req.input})
    else:
        for m in req.input:
            text = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
            msgs.append({"role": ROLES[m.role], "content": text})
    body = {"model": req.model, "messages": msgs,
            "max_completion_tokens": req.max_output_tokens,
            "response_format": text_format_to_response_format(req.text and req.text.format)}
    for k in ("temperature", "top_p"):
        if getattr(req, k) is not None:
            body[k] = getattr(req, k)
    try:
        return chat_request(**body)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        field = {"messages": "input", "response_format": "text.format"}.get(
            str(err["loc"][0]), loc)
        raise ApiError(400, f"{field}: {err['msg']}", field) from None


def make_router(hub: Hub, prepare: Callable[[Any], tuple], chat_request: type[BaseModel]
                ) -> APIRouter:
    """`prepare` and `chat_request` are the chat endpoint's own (passed in: no import cycle)."""
    router = APIRouter()

    def prepare_responses(req: ResponsesRequest) -> tuple:
        try:
            return prepare(to_chat(req, chat_request))
        except ApiError as e:
            if e.param in ("max_completion_tokens", "messages"):  # name the field sent here
                field = "max_output_tokens" if e.param == "max_completion_tokens" else "input"
                raise ApiError(e.status, str(e.message).replace(e.param, field, 1),
                               field) from None
            raise

    def response(req: ResponsesRequest, rid: str, mid: str, status: str, text: str | None,
                 usage: dict | None, finish: str | None = None) -> dict[str, Any]:
        message = {"id": mid, "type": "message", "role": "assistant", "status": status,
                   "content": [] if text is None else [
                       {"type": "output_text", "text": text, "annotations": [],
                        "logprobs": []}]}
        return {
            "id": rid, "object": "response", "created_at": int(time.time()), "status": status,
            "error": None, "model": req.model if req.model.startswith("run:") else CHAT_IDS[0],
            "incomplete_details": ({"reason": "max_output_tokens"} if finish == "length"
                                   else None),
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "output": [] if text is None else [message], "parallel_tool_calls": False,
            "temperature": req.temperature, "top_p": req.top_p, "tool_choice": "none",
            "tools": [], "text": {"format": (req.text and req.text.format) or {"type": "text"}},
            "usage": usage,
        }

    def usage_of(n_in: int, n_out: int) -> dict[str, Any]:
        return {"input_tokens": n_in, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": n_out, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": n_in + n_out}

    @router.post("/responses", response_model=None)
    async def responses(req: ResponsesRequest, request: Request) -> Any:
        lm, ids, params, _ = await run_in_threadpool(prepare_responses, req)
        own = req.model.startswith("run:")
        batcher = await run_in_threadpool(hub.batcher, req.model if own else None)
        rid, mid = f"resp_{uuid.uuid4().hex[:24]}", f"msg_{uuid.uuid4().hex[:24]}"
        if req.stream:
            return StreamingResponse(events(req, batcher, ids, params[0], rid, mid),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        outs = await unless_gone(request, [batcher.submit(ids, params[0])])
        if outs is None:  # nobody is listening; 499 is nginx's "client closed request"
            return Response(status_code=499)
        out = outs[0]
        text, finish = out.text, out.finish_reason
        status = "incomplete" if finish == "length" else "completed"
        return response(req, rid, mid, status, text, usage_of(len(ids), len(out.token_ids)),
                        finish)

    async def events(req: ResponsesRequest, batcher: Any, ids: list[int], params: Any,
                     rid: str, mid: str) -> AsyncIterator[str]:
        seq = 0

        def ev(kind: str, **body: Any) -> str:
            nonlocal seq
            seq += 1
            data = {"type": kind, "sequence_number": seq - 1, **body}
            return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

        where = {"item_id": mid, "output_index": 0, "content_index": 0}
        start = response(req, rid, mid, "in_progress", None, None)
        yield ev("response.created", response=start)
        yield ev("response.in_progress", response=start)
        item = {"id": mid, "type": "message", "role": "assistant", "status": "in_progress",
                "content": []}
        yield ev("response.output_item.added", output_index=0, item=item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        yield ev("response.content_part.added", part=part, **where)
        handle, text = None, ""
        try:
            handle = batcher.submit(ids, params)
            async for piece in handle:
                text += piece
                yield ev("response.output_text.delta", delta=piece, logprobs=[], **where)
        except Exception as e:  # the 200 is sent: report it in the stream
            err = sse_error(e)["error"]
            yield ev("error", message=err["message"], code=err["code"], param=err["param"])
            return
        finally:
            if handle is not None:
                handle.cancel()
        out = handle.result
        finish = out.finish_reason
        yield ev("response.output_text.done", text=text, logprobs=[], **where)
        yield ev("response.content_part.done", part={**part, "text": text}, **where)
        status = "incomplete" if finish == "length" else "completed"
        final = response(req, rid, mid, status, text, usage_of(len(ids), len(out.token_ids)),
                         finish)
        yield ev("response.output_item.done", output_index=0, item=final["output"][0])
        yield ev(f"response.{status}", response=final)

    return router
