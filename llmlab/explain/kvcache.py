"""The KV cache at work (issue #23, item 5): how much memory it takes as the context grows,
which key/value rows each decoding step computes and which it reuses, what it saves in time
against recomputing the whole prefix, and what int8/int4 weights cost in accuracy per layer
and give in speed. Everything is computed from a model's config or measured on the model."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from llmlab.generate.engine import forward, iter_decode
from llmlab.generate.sampling import SamplingParams
from llmlab.model.cache import KVCache
from llmlab.model.config import ModelConfig
from llmlab.model.hooks import capture, intervene

# Llama-3.1-8B's published config.json: 32 layers, 32 query heads, 8 key/value heads
# (grouped-query attention), head_dim 4096 / 32 = 128, bf16 weights and cache.
LLAMA31_8B = {"n_layer": 32, "n_head": 32, "n_kv_head": 8, "head_dim": 128}


@dataclass
class CacheShape:
    name: str
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    bytes_per_value: int

    @property
    def bytes_per_token(self) -> int:
        """One K and one V row per layer per KV head: layers x kv_heads x head_dim x 2 x bytes."""
        return self.n_layer * self.n_kv_head * self.head_dim * 2 * self.bytes_per_value


def shape_of(cfg: ModelConfig, name: str, dtype: torch.dtype = torch.float32) -> CacheShape:
    """The cache geometry of a model config (n_kv_head None means MHA)."""
    n_kv = cfg.n_kv_head or cfg.n_head
    hd = cfg.head_dim or cfg.d_model // cfg.n_head
    size = torch.empty((), dtype=dtype).element_size()
    return CacheShape(name, cfg.n_layer, cfg.n_head, n_kv, hd, size)


def cache_bytes(shape: CacheShape, tokens: int, batch: int = 1) -> int:
    return shape.bytes_per_token * tokens * batch


def allocated_bytes(cache: KVCache) -> int:
    """What a KVCache actually holds: the bytes of every K and V buffer it allocated."""
    return sum(t.numel() * t.element_size() for t in [*cache.k, *cache.v])


@dataclass
class MemoryCurve:
    contexts: list[int]
    series: list[dict[str, Any]]  # {name, n_layer, n_head, n_kv_head, head_dim, bytes, per_token}


def memory_curve(cfg: ModelConfig, name: str, dtype: torch.dtype = torch.float32,
                 contexts: list[int] | None = None) -> MemoryCurve:
    """Cache bytes at each context length for `cfg` (in `dtype`, as the engine stores it),
    and for Llama-3.1-8B in bf16 with its 8 KV heads (GQA) and as if every head kept its
    own K/V (MHA): the same model, 4x the cache."""
    contexts = contexts or [2 ** k for k in range(7, 18)]  # 128 .. 131072 (Llama's 128k)
    g = LLAMA31_8B
    shapes = [shape_of(cfg, name, dtype),
              CacheShape("Llama-3.1-8B (GQA, 8 KV heads)", g["n_layer"], g["n_head"],
                         g["n_kv_head"], g["head_dim"], 2),
              CacheShape("Llama-3.1-8B as MHA (32 KV heads)", g["n_layer"], g["n_head"],
                         g["n_head"], g["head_dim"], 2)]
    series = [{**vars(s), "per_token": s.bytes_per_token,
               "bytes": [cache_bytes(s, t) for t in contexts]} for s in shapes]
    return MemoryCurve(contexts, series)


@dataclass
class DecodeTrace:
    prompt_ids: list[int]
    tokens: list[int]  # the greedy new tokens
    pieces: list[str]  # prompt pieces, then the new ones
    steps: list[dict[str, Any]]  # {kind, reused: [0, a), computed: [a, b), cache_len}
    logits: list[torch.Tensor] = field(default_factory=list, repr=False)  # (V,) per new token


@torch.inference_mode()
def trace_decode(lm: Any, ids: list[int], n_new: int) -> DecodeTrace:
    """Greedy decoding through the engine's own cached forward, reading the cache's length
    before and after each step: prefill computes K/V for every prompt row; each decode step
    reuses all rows so far and computes one."""
    model = lm.model
    cache = KVCache(model.cfg, 1, len(ids) + n_new, model.device, model.dtype)
    x = torch.tensor([ids], device=model.device)
    steps, tokens, logits = [], [], []
    for i in range(n_new):
        before = cache.length
        out = forward(model, x, cache, None)[0].float()
        steps.append({"kind": "prefill" if i == 0 else "decode", "reused": [0, before],
                      "computed": [before, cache.length], "cache_len": cache.length})
        logits.append(out)
        tokens.append(int(out.argmax()))
        x = torch.tensor([[tokens[-1]]], device=model.device)
    pieces = lm.tokenizer.pieces(ids + tokens)
    return DecodeTrace(ids, tokens, pieces, steps, logits)


@torch.inference_mode()
def recompute_decode(model: Any, ids: list[int],
                     n_new: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy decoding without a cache: every step runs the whole sequence again."""
    seq, logits = list(ids), []
    for _ in range(n_new):
        out = model(torch.tensor([seq], device=model.device), last_only=True).logits[0, -1]
        logits.append(out.float())
        seq.append(int(out.argmax()))
    return seq[len(ids):], logits


@dataclass
class Timing:
    n_prompt: int
    n_new: int
    cached_ms: list[float]  # wall time of each new token, the first being the prefill
    recompute_ms: list[float]
    same_tokens: bool

    @property
    def speedup(self) -> float:
        return sum(self.recompute_ms) / max(sum(self.cached_ms), 1e-9)


def _timed_steps(run: Any) -> list[float]:
    """Milliseconds between successive yields of `run` (the first from the call)."""
    out, t = [], time.perf_counter()
    for _ in run:
        now = time.perf_counter()
        out.append(1000 * (now - t))
        t = now
    return out


@torch.inference_mode()
def time_cache(lm: Any, ids: list[int], n_new: int) -> Timing:
    """Wall time per token, batch 1, greedy: the cached forward vs full recompute."""
    model = lm.model
    toks: dict[str, list[int]] = {"cached": [], "full": []}

    def cached() -> Any:
        cache = KVCache(model.cfg, 1, len(ids) + n_new, model.device, model.dtype)
        x = torch.tensor([ids], device=model.device)
        for _ in range(n_new):
            toks["cached"].append(int(forward(model, x, cache, None)[0].argmax()))
            x = torch.tensor([[toks["cached"][-1]]], device=model.device)
            yield

    def full() -> Any:
        seq = list(ids)
        for _ in range(n_new):
            out = model(torch.tensor([seq], device=model.device), last_only=True).logits
            seq.append(int(out[0, -1].argmax()))
            toks["full"].append(seq[-1])
            yield

    model(torch.tensor([ids[:4]], device=model.device))  # warm-up: first-call allocations
    c, f = _timed_steps(cached()), _timed_steps(full())
    return Timing(len(ids), n_new, c, f, toks["cached"] == toks["full"])


def layer_outputs(model: Any, ids: list[int]) -> list[torch.Tensor]:
    """Each block's output (the residual stream after it), then the logits, in fp32."""
    n = len(model.model.layers)
    store, edits = capture(model, [("resid", i) for i in range(1, n + 1)])
    with torch.inference_mode(), intervene(model, edits):
        logits = model(torch.tensor([ids], device=model.device)).logits
    return [store[("resid", i)].float() for i in range(1, n + 1)] + [logits.float()]


def relative_errors(ref: list[torch.Tensor], got: list[torch.Tensor]) -> list[float]:
    """||got - ref|| / ||ref|| per layer (Frobenius, over every position)."""
    return [float((g - r).norm() / r.norm().clamp(min=1e-12))
            for r, g in zip(ref, got, strict=True)]


def decode_rate(model: Any, ids: list[int], n_new: int) -> float:
    """Decode tokens per second at batch 1, greedy, through `iter_decode` (which runs the
    project's fast CPU decoder for int8/int4 weights); the prefill is left out."""
    params = SamplingParams(max_new_tokens=n_new, temperature=0.0)
    ms = _timed_steps(iter_decode(model, [ids], params))
    decode = ms[1:]  # the first yield comes after the prefill
    return 1000 * len(decode) / max(sum(decode), 1e-9)


@dataclass
class QuantReport:
    layers: list[str]  # "block 0" .. "block L-1", "logits"
    rel_error: dict[str, list[float]]  # dtype -> per layer, against fp32
    top1_agree: dict[str, float]  # share of positions whose argmax token matches fp32's
    tok_s: dict[str, float]
    weight_bytes: dict[str, int]


def _weight_bytes(model: torch.nn.Module) -> int:
    seen = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in seen.values())


def quant_report(lm: Any, ids: list[int], n_new: int = 16,
                 dtypes: tuple[str, ...] = ("fp32", "int8", "int4")) -> QuantReport:
    """Quantise copies of `lm`'s fp32 model with the project's own quantisers; compare each
    block's output on `ids` with fp32, and measure decode speed. The "fp32" row runs the model
    again through the same capture, so it checks the comparison itself (its error must be 0);
    it is not copied (a copy of SmolLM2 in fp32 would hold another 0.5 GB)."""
    from llmlab.lm import CASTS

    base = lm.model
    ref = layer_outputs(base, ids)
    n = len(base.model.layers)
    out = QuantReport([f"block {i}" for i in range(n)] + ["logits"], {}, {}, {}, {})
    for dt in dtypes:
        q = base if dt == "fp32" else CASTS[dt](copy.deepcopy(base))
        got = layer_outputs(q, ids)
        out.rel_error[dt] = relative_errors(ref, got)
        out.top1_agree[dt] = float((got[-1].argmax(-1) == ref[-1].argmax(-1)).float().mean())
        out.tok_s[dt] = decode_rate(q, ids, n_new)
        out.weight_bytes[dt] = _weight_bytes(q)
        del q
    return out
