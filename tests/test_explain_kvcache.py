"""The KV cache at work (issue #23, item 5): the memory formula against the bytes KVCache
really allocates, cached decoding against full recompute and against transformers' own
cached generate on the HF export, and the quantisers' per-layer error."""

from __future__ import annotations

import pytest
import torch
from next_token_ref import tiny_llama

from llmlab.explain import kvcache as kv
from llmlab.model import ModelConfig
from llmlab.model.cache import KVCache

CONFIGS = {
    "gqa": ModelConfig(n_layer=3, d_model=96, n_head=6, n_kv_head=2),
    "mha": ModelConfig(n_layer=2, d_model=64, n_head=4),
    "mqa-wide-head": ModelConfig(n_layer=2, d_model=64, n_head=4, n_kv_head=1, head_dim=32),
    "smollm2-shape": ModelConfig(n_layer=30, d_model=576, n_head=9, n_kv_head=3),
    "llama-3.1-8b": ModelConfig(d_model=4096, **kv.LLAMA31_8B),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_memory_formula_matches_allocated(name: str, dtype: torch.dtype) -> None:
    cfg = CONFIGS[name]
    shape = kv.shape_of(cfg, name, dtype)
    for tokens, batch in [(1, 1), (7, 1), (5, 3)]:
        cache = KVCache(cfg, batch, tokens, dtype=dtype)
        assert kv.cache_bytes(shape, tokens, batch) == kv.allocated_bytes(cache)


def test_memory_curve_series() -> None:
    cfg = CONFIGS["gqa"]
    curve = kv.memory_curve(cfg, "gqa", contexts=[3, 11])
    own, gqa, mha = curve.series
    assert own["bytes"] == [kv.allocated_bytes(KVCache(cfg, 1, t)) for t in (3, 11)]
    llama = ModelConfig(d_model=4096, **kv.LLAMA31_8B)
    as_mha = ModelConfig(d_model=4096, **{**kv.LLAMA31_8B, "n_kv_head": 32})
    for s, c in [(gqa, llama), (mha, as_mha)]:
        assert s["bytes"] == [kv.allocated_bytes(KVCache(c, 1, t, dtype=torch.bfloat16))
                              for t in (3, 11)]
    assert mha["per_token"] == 4 * gqa["per_token"]  # 32 KV heads instead of 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return tiny_llama(tmp_path_factory.mktemp("kv"))


def test_cached_decode_equals_recompute_and_transformers(tiny) -> None:  # noqa: ANN001
    lm, ref = tiny
    ids = lm.tokenizer.encode("Classes provide a means of bundling data")
    n = 8
    tr = kv.trace_decode(lm, ids, n)
    toks, logits = kv.recompute_decode(lm.model, ids, n)
    assert tr.tokens == toks
    torch.testing.assert_close(torch.stack(tr.logits), torch.stack(logits), atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # transformers' own KV-cache greedy decoding of the HF export
        hf = ref.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                          use_cache=True, pad_token_id=0, eos_token_id=None)
    assert tr.tokens == hf[0, len(ids):].tolist()
    # The cache's own lengths: the prefill computes every prompt row, then one row a step,
    # each step reusing exactly what the steps before it computed.
    assert tr.steps[0] == {"kind": "prefill", "reused": [0, 0], "computed": [0, len(ids)],
                           "cache_len": len(ids)}
    for prev, s in zip(tr.steps, tr.steps[1:], strict=False):
        assert s["kind"] == "decode"
        assert s["reused"] == [0, prev["cache_len"]]
        assert s["computed"] == [prev["cache_len"], prev["cache_len"] + 1]
    assert len(tr.pieces) == len(ids) + n


def test_timing_runs_the_same_tokens(tiny) -> None:  # noqa: ANN001
    lm, _ = tiny
    t = kv.time_cache(lm, lm.tokenizer.encode("Classes provide"), 4)
    assert t.same_tokens and len(t.cached_ms) == len(t.recompute_ms) == 4


def test_quant_error_zero_for_fp32_and_grows_int8_to_int4(tiny) -> None:  # noqa: ANN001
    lm, _ = tiny
    ids = lm.tokenizer.encode("Classes provide a means of bundling data and functionality")
    rep = kv.quant_report(lm, ids, n_new=3)
    assert rep.layers[-1] == "logits" and len(rep.layers) == lm.model.cfg.n_layer + 1
    assert rep.rel_error["fp32"] == [0.0] * len(rep.layers)
    e8, e4 = rep.rel_error["int8"], rep.rel_error["int4"]
    assert all(0 < a < b for a, b in zip(e8, e4, strict=True)), (e8, e4)
    # (int4 holds two copies of its nibbles, the kernel's packing and a plain one for prefill)
    assert max(rep.weight_bytes["int4"], rep.weight_bytes["int8"]) < rep.weight_bytes["fp32"]
    assert all(r > 0 for r in rep.tok_s.values())
