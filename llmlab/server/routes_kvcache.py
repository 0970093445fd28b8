"""The "KV cache" page (issue #23, item 5): cache memory as the context grows, prefill vs
decode rows, cached vs recompute timing, int8/int4 error and speed. Every number comes from
llmlab.explain.kvcache; measurements are cached per (loaded model, prompt), and nothing is
computed at server start."""

from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from llmlab.explain import kvcache as kv
from llmlab.server.errors import ApiError, Text
from llmlab.server.hub import Hub
from llmlab.server.routes_inside import rounded

MAX_PROMPT_TOKENS = 48  # full recompute runs the whole prefix once per new token


class KvRequest(BaseModel):
    text: Text = Field("The key and value of every past token are kept, so each new token",
                       min_length=1)
    model: str = "smollm2"
    n_new: int = Field(8, ge=2, le=24)


def make_router(hub: Hub) -> APIRouter:
    r = APIRouter(prefix="/api/kvcache")

    def causal(model: str) -> Any:
        lm = hub.attention_model(model)
        if not lm.model.cfg.causal or not lm.model.cfg.lm_head:
            raise ApiError(400, f"model: {model!r} is an encoder; a KV cache serves "
                           "left-to-right decoding (pick SmolLM2 or a run)", "model")
        return lm

    def prompt(lm: Any, text: str) -> list[int]:
        if len(text) > hub.cfg.max_text_chars:
            raise ApiError(400, f"text: at most {hub.cfg.max_text_chars} characters", "text")
        ids = lm.tokenizer.encode(text)
        if not 1 <= len(ids) <= MAX_PROMPT_TOKENS:
            raise ApiError(400, f"text: 1 to {MAX_PROMPT_TOKENS} tokens here, got {len(ids)}",
                           "text")
        return ids

    def check_room(lm: Any, ids: list[int], n_new: int) -> None:
        if len(ids) + n_new > lm.model.cfg.max_seq_len:
            raise ApiError(400, f"n_new: prompt + n_new must fit the model's "
                           f"{lm.model.cfg.max_seq_len}-token context", "n_new")

    # `ident` (the loaded model's id) keys each cache: run:ID names the run's newest model.
    @functools.lru_cache(maxsize=8)
    def trace(model: str, text: str, n_new: int, ident: int) -> dict[str, Any]:
        lm = causal(model)
        ids = prompt(lm, text)
        tr = hub.run(kv.trace_decode, lm, ids, n_new)
        return {"prompt_len": len(ids), "tokens": tr.tokens, "pieces": tr.pieces,
                "steps": tr.steps}

    @functools.lru_cache(maxsize=8)
    def timing(model: str, text: str, n_new: int, ident: int) -> dict[str, Any]:
        lm = causal(model)
        t = hub.run(kv.time_cache, lm, prompt(lm, text), n_new)
        return rounded({**asdict(t), "speedup": t.speedup}, 2)

    @functools.lru_cache(maxsize=4)
    def quant(model: str, text: str, ident: int) -> dict[str, Any]:
        lm = causal(model)
        return rounded(asdict(hub.run(kv.quant_report, lm, prompt(lm, text), 16)), 6)

    def ident(model: str) -> int:
        return id(hub.attention_model(model))

    @r.post("/memory")
    def memory_route(req: KvRequest) -> dict[str, Any]:
        lm = causal(req.model)
        curve = kv.memory_curve(lm.model.cfg, lm.name or req.model, lm.model.dtype)
        return {**asdict(curve), "model": req.model, "dtype": str(lm.model.dtype)[6:],
                "max_seq_len": lm.model.cfg.max_seq_len,
                "sources": ["kvcache.memory_curve", "kvcache.bytes_per_token", "kvcache.cache"]}

    @r.post("/trace")
    def trace_route(req: KvRequest) -> dict[str, Any]:
        lm = causal(req.model)
        ids = prompt(lm, req.text)
        check_room(lm, ids, req.n_new)
        return {**trace(req.model, req.text, req.n_new, ident(req.model)), "model": req.model,
                "sources": ["kvcache.trace", "engine.forward", "kvcache.update"]}

    @r.post("/timing")
    def timing_route(req: KvRequest) -> dict[str, Any]:
        lm = causal(req.model)
        check_room(lm, prompt(lm, req.text), req.n_new)
        return {**timing(req.model, req.text, req.n_new, ident(req.model)), "model": req.model,
                "sources": ["kvcache.time_cache"]}

    @r.post("/quant")
    def quant_route(req: KvRequest) -> dict[str, Any]:
        lm = causal(req.model)
        check_room(lm, prompt(lm, req.text), 16)
        return {**quant(req.model, req.text, ident(req.model)), "model": req.model,
                "sources": ["kvcache.quant_report", "kvcache.layer_outputs", "quant.int4"]}

    return r
