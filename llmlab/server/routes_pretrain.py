"""The pretraining page's plan: what the depth dial makes (shape, parameters, the lr
schedule) before a run starts. The numbers are llmlab.train.depth's; this only checks the
inputs and serializes. Runs themselves go through /api/runs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from llmlab.lab.options import TOKENIZERS
from llmlab.server.errors import ApiError
from llmlab.server.hub import Hub
from llmlab.server.routes_runs import MIN_CORPUS_CHARS
from llmlab.train.depth import plan
from llmlab.train.presets import PRESETS

SOURCES = ["pretrain.loss", "pretrain.fit", "pretrain.depth", "pretrain.run"]
MIN_BPE, MAX_BPE = 257, 65536  # 256 bytes + the end-of-text token; 16-bit token shards


def make_router(hub: Hub) -> APIRouter:
    r = APIRouter(prefix="/api/pretrain")

    @r.get("/shape")
    def shape(depth: int = Query(3, ge=1, le=48), tokenizer: str = "bpe:1024",
              steps: int | None = Query(None, ge=1, le=1_000_000),
              preset: str = "micro") -> dict[str, Any]:
        if preset not in PRESETS:
            raise ApiError(400, f"preset: expected one of {', '.join(PRESETS)}, got "
                           f"{preset!r}", "preset")
        if tokenizer.startswith("bpe:"):
            n = tokenizer[4:]
            if not n.isdigit() or not MIN_BPE <= int(n) <= MAX_BPE:
                raise ApiError(400, f"tokenizer: expected bpe:N with N in [{MIN_BPE}, "
                               f"{MAX_BPE}], got {tokenizer!r}", "tokenizer")
        elif tokenizer not in TOKENIZERS:
            raise ApiError(400, f"tokenizer: expected bpe:N or one of "
                           f"{', '.join(TOKENIZERS)}, got {tokenizer!r}", "tokenizer")
        return {**plan(preset, depth, tokenizer, steps), "sources": SOURCES,
                "corpus": {"min_chars": MIN_CORPUS_CHARS,
                           "max_chars": hub.cfg.max_corpus_chars}}

    return r
