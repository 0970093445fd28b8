"""The SFT masking page: which tokens `llmlab sft` trains on, and how examples are packed.

All of it is llmlab.train.sft_view (which calls the training code); this file checks the
request and shapes the JSON."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from llmlab.server.errors import ApiError, Text
from llmlab.server.hub import Hub
from llmlab.train import sft_view


class Message(BaseModel):
    role: str = Field(max_length=32)
    content: Text = Field(max_length=4000)


class MaskRequest(BaseModel):
    messages: list[Message] = Field(max_length=16)
    template: str = Field("chatml", max_length=64)
    system: Text | None = Field(None, max_length=4000)
    seq_len: int = Field(256, ge=32, le=1024)
    pack_examples: int = Field(4, ge=0, le=sft_view.BUNDLED_MAX)


def make_router(hub: Hub) -> APIRouter:
    router = APIRouter(prefix="/api")

    @router.post("/sft/mask")
    def sft_mask(req: MaskRequest) -> dict[str, Any]:
        tok = hub.lm().tokenizer
        try:
            template = sft_view.get_template(req.template)
            msgs = sft_view.check_messages([m.model_dump() for m in req.messages])
            view = sft_view.token_view(tok, template, msgs, req.system)
            packed = sft_view.pack_view(tok, template, msgs, req.system, req.seq_len,
                                        req.pack_examples)
        except ValueError as e:  # the library's message starts with the field it is about
            msg = str(e)
            raise ApiError(400, msg, msg.split(":", 1)[0]) from None
        return {"template": req.template, "templates": list(sft_view.TEMPLATES), **view,
                "packing": packed,
                "sources": ["sft.encode_chat", "sft.tokenize", "sft.pack", "sft.doc_mask",
                            "sft.loss"]}

    return router
