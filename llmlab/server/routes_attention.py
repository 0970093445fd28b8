"""Self-attention and positional-encoding endpoints."""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import torch
from fastapi import APIRouter
from pydantic import BaseModel, Field

from llmlab.explain.attention import (
    AttentionRun,
    attention_operations,
    entropy,
    run_attention,
    softmax_with_temperature,
    top_keys,
)
from llmlab.explain.positions import rope_panel, sinusoidal_panel
from llmlab.server.errors import ApiError, Text
from llmlab.server.hub import Hub


class AttentionRequest(BaseModel):
    text: Text = Field(min_length=1)
    model: str = "smollm2"
    mode: Literal["causal", "bidirectional", "native"] = "native"
    layer: int = Field(0, ge=0)
    head: int | Literal["all"] = 0
    temperature: float = Field(1.0, gt=0, le=100)


def _r(t: torch.Tensor, nd: int = 5) -> list:
    """Round for JSON; masked -inf scores become null."""
    out = t.double().nan_to_num(neginf=math.nan).mul(10**nd).round().div(10**nd).tolist()

    def fix(x: Any) -> Any:
        if isinstance(x, list):
            return [fix(v) for v in x]
        return None if isinstance(x, float) and math.isnan(x) else x

    return fix(out)


def make_router(hub: Hub) -> APIRouter:
    r = APIRouter(prefix="/api")

    # Each run holds every layer's maps, so only the last few are kept.
    @functools.lru_cache(maxsize=hub.cfg.attention_cache)
    def cached_run(model: str, text: str, causal: bool | None, ident: int) -> AttentionRun:
        # `ident` (the loaded model's id) keys the cache too: run:ID means the run's newest
        # model, which changes as it trains.
        return hub.run(run_attention, hub.attention_model(model), text, causal)

    def get_run(req: AttentionRequest) -> tuple[AttentionRun, Any]:
        lm = hub.attention_model(req.model)
        causal = None if req.mode == "native" else req.mode == "causal"
        ids = lm.tokenizer.encode(req.text)
        limit = hub.cfg.max_attention_tokens
        if len(ids) > limit:
            raise ApiError(
                400,
                f"text: {len(ids)} tokens; the attention view takes at most "
                f"{limit} (the map is n x n per head)",
                "text",
            )
        return cached_run(req.model, req.text, causal, id(lm)), lm

    @r.post("/attention")
    def attention(req: AttentionRequest) -> dict[str, Any]:
        if len(req.text) > hub.cfg.max_text_chars:
            raise ApiError(400, f"text: at most {hub.cfg.max_text_chars} characters", "text")
        run, lm = get_run(req)
        if req.layer >= run.n_layers:
            raise ApiError(400, f"layer: must be < {run.n_layers}", "layer")
        if req.head != "all" and not 0 <= req.head < run.n_heads:
            raise ApiError(400, f"head: must be 'all' or in [0, {run.n_heads})", "head")
        scores = run.scores[req.layer]  # (H, T, T)
        weights = softmax_with_temperature(scores, req.temperature)
        heads = list(range(run.n_heads)) if req.head == "all" else [req.head]
        maps = [_r(weights[h], 4) for h in heads]
        h0 = heads[0]
        n = len(run.ids)
        return {
            "model": req.model,
            "model_name": lm.name,
            "tokens": run.tokens,
            "ids": run.ids,
            "causal": run.causal,
            "layer": req.layer,
            "head": req.head,
            "heads": heads,
            "temperature": req.temperature,
            "n_layers": run.n_layers,
            "n_heads": run.n_heads,
            "weights": maps,
            # scores and per-query facts for the first shown head (the selected one)
            "scores": _r(scores[h0], 3),
            "top_keys": [top_keys(weights[h0, q], 3) for q in range(n)],
            "entropy": _r(entropy(weights[h0]), 4),
            "stats": {
                "tokens": n,
                "heads": run.n_heads,
                "layers": run.n_layers,
                "attention_ops": attention_operations(n, run.n_heads, run.n_layers),
            },
            "sources": [
                "attention.run",
                "attention.explicit",
                "attention.temperature",
                "attention.mode",
            ],
        }

    @r.get("/models")
    def models() -> dict[str, Any]:
        """The attention page's model menu; `paths` says whether any directory is accepted."""
        return {"attention": hub.attention_models(), "paths": hub.cfg.allow_local_models}

    @r.get("/positions")
    def positions(n: int = 48, d: int = 64, model: str = "smollm2") -> dict[str, Any]:
        if not 2 <= n <= 256:
            raise ApiError(400, "n: must be in [2, 256]", "n")
        if not (2 <= d <= 1024 and d % 2 == 0):
            raise ApiError(400, "d: must be even and in [2, 1024]", "d")
        lm = hub.attention_model(model)
        cfg = lm.cfg
        out: dict[str, Any] = {"n": n, "d": d, "sinusoidal": _r(sinusoidal_panel(n, d), 4)}
        if cfg.pos == "rope":
            rp = rope_panel(n, cfg.head_dim, cfg.rope_theta)
            out["rope"] = {
                "head_dim": cfg.head_dim,
                "theta": cfg.rope_theta,
                "wrapped": _r(rp["wrapped"], 4),
                "wavelength": _r(rp["wavelength"], 2),
            }
        out["model_pos"] = cfg.pos
        out["sources"] = ["positions.sinusoidal", "positions.rope"]
        return out

    return r
