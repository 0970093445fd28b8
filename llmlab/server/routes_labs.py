"""Tokenizer, decoding, embeddings and LoRA endpoints."""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch
from fastapi import APIRouter
from pydantic import BaseModel, Field

from llmlab.explain import decoding, embeddings, spectrum
from llmlab.explain.constrained import mask_trace
from llmlab.generate.chat import encode_prompts
from llmlab.generate.constrain import json_schema
from llmlab.generate.sampling import SEED_MAX, SamplingParams
from llmlab.peft import accounting
from llmlab.server.errors import ApiError, Text
from llmlab.server.hub import Hub
from llmlab.tokenizer import load_tokenizer

BASES = {
    "llama-3.1-8b": accounting.LLAMA_31_8B,
    "llama-2-13b": accounting.LLAMA_2_13B,
    "smollm2-135m": accounting.SMOLLM2_135M,
}
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class TokenizeRequest(BaseModel):
    text: Text = Field(max_length=20000)
    tokenizer: str = "smollm2"


class NextRequest(BaseModel):
    text: Text = Field(min_length=1, max_length=4000)
    model: str = "smollm2"  # or local:NAME, run:ID[@STEP]
    chat: bool = False
    append_ids: list[int] = Field(default_factory=list, max_length=256)
    temperature: float = Field(1.0, ge=0, le=10)
    top_k: int = Field(0, ge=0, le=49152)
    top_p: float = Field(1.0, gt=0, le=1)
    min_p: float = Field(0.0, ge=0, le=1)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    k: int = Field(20, ge=1, le=100)


class ConstrainedRequest(BaseModel):
    text: Text = Field(min_length=1, max_length=2000)
    json_schema: dict[str, Any]
    max_tokens: int = Field(32, ge=1, le=64)


class WordRequest(BaseModel):
    word: str = Field(min_length=1, max_length=64)
    space: Literal["minilm", "smollm2"] = "minilm"
    k: int = Field(8, ge=1, le=50)


class AnalogyRequest(BaseModel):
    a: str = Field(min_length=1, max_length=64)
    b: str = Field(min_length=1, max_length=64)
    c: str = Field(min_length=1, max_length=64)
    space: Literal["minilm", "smollm2"] = "minilm"
    k: int = Field(5, ge=1, le=50)


def make_router(hub: Hub) -> APIRouter:
    router = APIRouter(prefix="/api")

    @functools.lru_cache(maxsize=hub.cfg.tokenizer_cache)
    def cached_tokenizer(name: str) -> Any:
        try:
            return load_tokenizer(name)
        except (OSError, ValueError) as e:  # no such dir, or no tokenizer in it
            raise ApiError(400, f"tokenizer: {e}", "tokenizer") from e

    def get_tokenizer(name: str) -> Any:
        if name.startswith(("local:", "run:")):  # a checkpoint's own trained tokenizer
            return hub.attention_model(name).tokenizer
        if name not in ("gpt2", "cl100k", "smollm2") and not hub.cfg.allow_local_models:
            raise PermissionError("tokenizer: local tokenizer dirs are disabled")
        return cached_tokenizer(name)

    @router.post("/tokenize")
    def tokenize(req: TokenizeRequest) -> dict[str, Any]:
        tok = get_tokenizer(req.tokenizer)
        ids = tok.encode(req.text)
        return {
            "tokenizer": req.tokenizer,
            "ids": ids,
            "pieces": tok.pieces(ids),
            "n_tokens": len(ids),
            "n_chars": len(req.text),
            "n_bytes": len(req.text.encode()),
            "vocab_size": len(tok.vocab()) if hasattr(tok, "vocab") else None,
            "sources": ["tokenizer.encode"],
        }

    @router.post("/decode/next")
    def next_token(req: NextRequest) -> dict[str, Any]:
        lm = hub.attention_model(req.model)
        if lm.kind != "causal-lm":
            raise ApiError(400, f"model: {req.model!r} does not predict next tokens", "model")
        ids = encode_prompts(lm, [req.text], req.chat)[0]
        vocab = lm.cfg.vocab_size
        if any(not 0 <= i < vocab for i in req.append_ids):
            raise ApiError(400, f"append_ids: token ids must be in [0, {vocab})", "append_ids")
        ids = ids + req.append_ids
        params = SamplingParams(
            temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, min_p=req.min_p
        )
        out = hub.run(decoding.next_token, lm, ids, params, req.k, req.seed)
        sampled = None
        if out.sampled is not None:
            sampled = {"id": out.sampled, "piece": lm.tokenizer.pieces([out.sampled])[0]}
        return {
            "n_prompt_tokens": len(ids),
            "top": out.top,
            "kept": out.kept,
            "vocab": vocab,
            "entropy_raw": out.entropy_raw,
            "entropy": out.entropy,
            "sampled": sampled,
            "generated": lm.tokenizer.decode(req.append_ids),
            "sources": ["decoding.next", "decoding.process", "decoding.top_p"],
        }

    @router.post("/decode/constrained")
    def constrained(req: ConstrainedRequest) -> dict[str, Any]:
        try:
            c = json_schema(req.json_schema)
        except ValueError as e:
            raise ApiError(400, f"json_{e}", "json_schema") from None
        lm = hub.lm()
        ids = encode_prompts(lm, [req.text], chat=True)[0]
        out = hub.run(mask_trace, lm, ids, c, req.max_tokens)
        return {**out, "sources": ["constrain.mask", "constrain.json_schema"]}

    @functools.cache  # one table per space ("minilm" or "smollm2")
    def space(name: str) -> tuple[torch.Tensor, list[str]]:
        words = embeddings.word_list()
        if name == "minilm":
            return hub.run(hub.enc().embed, words), words
        return embeddings.token_table(hub.lm(), words)

    def vec(name: str, word: str, field: str) -> torch.Tensor:
        w = word.strip().lower()
        if name == "minilm":
            return hub.run(hub.enc().embed, [w])[0]
        row, kept = embeddings.token_table(hub.lm(), [w])
        if not kept:
            n = len(hub.lm().tokenizer.encode(" " + w))
            raise ApiError(
                400,
                f"{field}: {word!r} is {n} SmolLM2 tokens; the embedding "
                "table has rows for single tokens only",
                field,
            )
        return row[0]

    @router.post("/embeddings/neighbours")
    def neighbours(req: WordRequest) -> dict[str, Any]:
        table, labels = space(req.space)
        q = vec(req.space, req.word, "word")
        nn = embeddings.cosine_neighbours(q, table, labels, req.k, {req.word.strip().lower()})
        return {
            "word": req.word,
            "space": req.space,
            "vocab": len(labels),
            "neighbours": [{"word": w, "cos": c} for w, c in nn],
            "sources": ["embeddings.neighbours"],
        }

    @router.post("/embeddings/analogy")
    def analogy(req: AnalogyRequest) -> dict[str, Any]:
        table, labels = space(req.space)
        a, b, c = (vec(req.space, getattr(req, f), f) for f in ("a", "b", "c"))
        target = embeddings.analogy_vector(a, b, c)
        skip = {w.strip().lower() for w in (req.a, req.b, req.c)}
        nn = embeddings.cosine_neighbours(target, table, labels, req.k, skip)
        return {
            "space": req.space,
            "expression": f"{req.b} - {req.a} + {req.c}",
            "results": [{"word": w, "cos": cos} for w, cos in nn],
            "sources": ["embeddings.analogy", "embeddings.neighbours"],
        }

    @router.get("/lora/counts")
    def lora_counts(
        d: int = 4096,
        r: int = 8,
        alpha: float = 16.0,
        d_out: int | None = None,
        base: str = "llama-3.1-8b",
        targets: str = "q_proj,v_proj",
    ) -> dict[str, Any]:
        if not 1 <= d <= 65536:
            raise ApiError(400, "d: must be in [1, 65536]", "d")
        if not 1 <= r <= min(d, 4096):
            raise ApiError(400, f"r: must be in [1, {min(d, 4096)}]", "r")
        if not 0 < alpha <= 4096:
            raise ApiError(400, "alpha: must be in (0, 4096]", "alpha")
        if d_out is not None and not 1 <= d_out <= 65536:
            raise ApiError(400, "d_out: must be in [1, 65536] (or left out: d)", "d_out")
        d_out = d_out or d
        if base not in BASES:
            raise ApiError(400, f"base: one of {sorted(BASES)}", "base")
        tl = [t for t in targets.split(",") if t]
        if any(t not in PROJ for t in tl):
            raise ApiError(400, f"targets: comma-separated, each one of {', '.join(PROJ)}",
                           "targets")
        m = accounting.lora_matrix_params(d, d_out, r)
        shape = BASES[base]
        return {
            "d": d,
            "d_out": d_out,
            "r": r,
            "alpha": alpha,
            "scale": alpha / r,
            "matrix": m,
            "matrix_pct": 100 * m["lora"] / m["full"],
            "base": base,
            "targets": tl,
            "shape": shape.__dict__,
            "model_trainable": accounting.lora_params(shape, r, tl),
            "model_total": shape.total_params(),
            "methods": accounting.compare_methods(shape, r, tuple(tl)),
            "sources": ["lora.params", "lora.compare"],
        }

    @functools.lru_cache(maxsize=32)
    def spectrum_of(layer: int, proj: str) -> tuple[list[float], list[float], list[int]]:
        s, err, shape = spectrum.projection_spectrum(hub.lm().model, layer, proj)
        return s.float().tolist(), err.float().tolist(), shape

    @router.get("/lora/spectrum")
    def lora_spectrum(layer: int = 0, proj: str = "q_proj") -> dict[str, Any]:
        n = hub.lm().cfg.n_layer
        if not 0 <= layer < n:
            raise ApiError(400, f"layer: must be in [0, {n})", "layer")
        if proj not in PROJ:
            raise ApiError(400, f"proj: one of {', '.join(PROJ)}", "proj")
        s, err, shape = hub.run(spectrum_of, layer, proj)
        st = torch.tensor(s)
        return {
            "layer": layer,
            "proj": proj,
            "shape": shape,
            "singular_values": s,
            "rel_error": err,
            "rank90": spectrum.energy_rank(st, 0.9),
            "sources": ["lora.errors"],
        }

    return router
