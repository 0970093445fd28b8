"""The "Inside the model" page (issue #23): logit lens, head roles, ablation, activation
patching and attention sinks. Every number comes from llmlab.explain; results are cached per
(model, prompt), and nothing is computed at server start."""

from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Any, Literal

import torch
from fastapi import APIRouter
from pydantic import BaseModel, Field

from llmlab.explain.attention import run_attention
from llmlab.explain.compare import compare_prompts
from llmlab.explain.heads import ROLES, head_roles
from llmlab.explain.lens import logit_lens
from llmlab.explain.patching import ablate, patch_sweep
from llmlab.explain.sinks import sink_share, without_sink
from llmlab.server.errors import ApiError, Text
from llmlab.server.hub import Hub

# A sweep runs the model (layers + 1) x tokens times: keep its prompts short.
MAX_PATCH_TOKENS = 16


class LensRequest(BaseModel):
    text: Text = Field("The capital of France is", min_length=1)
    model: str = "smollm2"
    top_k: int = Field(5, ge=1, le=10)


class HeadsRequest(BaseModel):
    model: str = "smollm2"
    n: int = Field(24, ge=4, le=64)  # random tokens, repeated once
    seed: int = Field(0, ge=0)


class AblateRequest(BaseModel):
    text: Text = Field("The capital of France is", min_length=1)
    model: str = "smollm2"
    kind: Literal["head", "mlp", "attn"] = "head"
    layer: int = Field(0, ge=0)
    head: int | None = Field(None, ge=0)
    how: Literal["zero", "mean"] = "zero"


class PatchRequest(BaseModel):
    clean: Text = Field("The Eiffel Tower is in", min_length=1)
    corrupt: Text = Field("The Colosseum is in", min_length=1)
    model: str = "smollm2"
    answer: Text | None = None  # one token; default: the clean prompt's top prediction
    wrong: Text | None = None  # one token; default: the corrupted prompt's
    kind: Literal["resid", "attn", "mlp"] = "resid"


class SinkRequest(BaseModel):
    text: Text = Field("The capital of France is Paris, and the capital of Italy is", min_length=1)
    model: str = "smollm2"
    layer: int = Field(0, ge=0)
    head: int = Field(0, ge=0)
    remove_sink: bool = False


class AbRequest(BaseModel):
    a: Text = Field("The capital of France is", min_length=1)
    b: Text = Field("The capital of Italy is", min_length=1)
    model: str = "smollm2"
    layer: int = Field(0, ge=0)
    head: int = Field(0, ge=0)
    top_k: int = Field(5, ge=1, le=10)


def rounded(x: Any, nd: int = 4) -> Any:
    """Floats rounded for JSON, through dicts, lists and tuples."""
    if isinstance(x, dict):
        return {k: rounded(v, nd) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [rounded(v, nd) for v in x]
    return round(x, nd) if isinstance(x, float) else x


def make_router(hub: Hub) -> APIRouter:
    r = APIRouter(prefix="/api/inside")

    def check_text(*texts: str) -> None:
        for t in texts:
            if len(t) > hub.cfg.max_text_chars:
                raise ApiError(400, f"text: at most {hub.cfg.max_text_chars} characters", "text")

    # `ident` (the loaded model's id) keys each cache too: run:ID names the run's newest
    # model, which changes while it trains.
    @functools.lru_cache(maxsize=8)
    def lens(model: str, text: str, top_k: int, ident: int) -> dict[str, Any]:
        lm = hub.attention_model(model)
        res = hub.run(logit_lens, lm, text, top_k, hub.cfg.max_attention_tokens)
        return rounded(asdict(res))

    @functools.lru_cache(maxsize=4)
    def roles(model: str, n: int, seed: int, ident: int) -> dict[str, Any]:
        lm = hub.attention_model(model)
        return rounded(asdict(hub.run(head_roles, lm, n, seed)))

    @functools.lru_cache(maxsize=4)
    def sweep(model: str, clean: str, corrupt: str, answer: str | None, wrong: str | None,
              kind: str, ident: int) -> dict[str, Any]:
        lm = hub.attention_model(model)
        res = hub.run(patch_sweep, lm, clean, corrupt, answer, wrong, kind, MAX_PATCH_TOKENS)
        return rounded(asdict(res))

    @functools.lru_cache(maxsize=4)
    def attention(model: str, text: str, ident: int) -> torch.Tensor:
        lm = hub.attention_model(model)
        if len(lm.tokenizer.encode(text)) > hub.cfg.max_attention_tokens:
            raise ApiError(400, f"text: at most {hub.cfg.max_attention_tokens} tokens here",
                           "text")
        return hub.run(run_attention, lm, text)

    @functools.lru_cache(maxsize=4)
    def ab(model: str, a: str, b: str, layer: int, head: int, top_k: int,
           ident: int) -> dict[str, Any]:
        lm = hub.attention_model(model)
        res = hub.run(compare_prompts, lm, a, b, layer, head, top_k, 10,
                      hub.cfg.max_attention_tokens)
        return rounded(asdict(res))

    def ident(model: str) -> int:
        return id(hub.attention_model(model))

    @r.post("/lens")
    def lens_route(req: LensRequest) -> dict[str, Any]:
        check_text(req.text)
        out = lens(req.model, req.text, req.top_k, ident(req.model))
        n_layers = len(out["top_ids"]) - 1
        return {**out, "model": req.model, "n_layers": n_layers,
                "layer_labels": ["embed"] + [f"after {i}" for i in range(n_layers)],
                "sources": ["inside.lens", "inside.lens_logits", "inside.hooks"]}

    @r.post("/heads")
    def heads_route(req: HeadsRequest) -> dict[str, Any]:
        out = roles(req.model, req.n, req.seed, ident(req.model))
        return {**out, "model": req.model, "roles": [*ROLES, "copying"],
                "sources": ["inside.roles", "inside.role_scores", "inside.copying"]}

    @r.post("/ablate")
    def ablate_route(req: AblateRequest) -> dict[str, Any]:
        check_text(req.text)
        lm = hub.attention_model(req.model)
        res = hub.run(ablate, lm, req.text, req.kind, req.layer, req.head, req.how, 8,
                      hub.cfg.max_attention_tokens)
        return {**rounded(asdict(res), 6), "model": req.model,
                "sources": ["inside.ablate", "inside.ablation_edit", "inside.hooks"]}

    @r.post("/patch")
    def patch_route(req: PatchRequest) -> dict[str, Any]:
        check_text(req.clean, req.corrupt)
        out = sweep(req.model, req.clean, req.corrupt, req.answer or None, req.wrong or None,
                    req.kind, ident(req.model))
        return {**out, "model": req.model,
                "sources": ["inside.patch", "inside.run_from", "inside.run_patched"]}

    @r.post("/ab")
    def ab_route(req: AbRequest) -> dict[str, Any]:
        if len(req.a) > hub.cfg.max_text_chars:
            raise ApiError(400, f"a: at most {hub.cfg.max_text_chars} characters", "a")
        if len(req.b) > hub.cfg.max_text_chars:
            raise ApiError(400, f"b: at most {hub.cfg.max_text_chars} characters", "b")
        out = ab(req.model, req.a, req.b, req.layer, req.head, req.top_k, ident(req.model))
        n_layers = out["n_layers"]
        return {**out, "model": req.model,
                "layer_labels": ["embed"] + [f"after {i}" for i in range(n_layers)],
                "sources": ["inside.compare", "inside.lens", "attention.run"]}

    @r.post("/sinks")
    def sinks_route(req: SinkRequest) -> dict[str, Any]:
        check_text(req.text)
        run = attention(req.model, req.text, ident(req.model))
        if len(run.ids) < 2:
            raise ApiError(400, "text: needs at least 2 tokens to show a sink", "text")
        if req.layer >= run.n_layers:
            raise ApiError(400, f"layer: must be < {run.n_layers}", "layer")
        if req.head >= run.n_heads:
            raise ApiError(400, f"head: must be < {run.n_heads}", "head")
        w = run.weights[req.layer, req.head]
        shown = without_sink(w) if req.remove_sink else w
        return {
            "model": req.model, "tokens": run.tokens, "causal": run.causal,
            "n_layers": run.n_layers, "n_heads": run.n_heads,
            "layer": req.layer, "head": req.head, "remove_sink": req.remove_sink,
            "share": rounded(sink_share(run.weights).tolist()),
            "weights": rounded(shown.tolist()),
            "sources": ["inside.sink_share", "inside.without_sink", "attention.run"],
        }

    return r
