"""The KV-cache endpoints: SmolLM2's memory line against the bytes KVCache allocates for its
real config, the prefill/decode trace and timings on a small checkpoint (its greedy tokens
against the model's own full forward), and 4xx errors that name their field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from llmlab.model.cache import KVCache


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory: pytest.TempPathFactory, lm: Any) -> Path:
    """A tiny random causal model with SmolLM2's tokenizer, saved as a checkpoint dir."""
    from llmlab.model import ModelConfig, Transformer
    from llmlab.weights.registry import save_checkpoint

    cfg = ModelConfig(vocab_size=lm.cfg.vocab_size, d_model=64, n_layer=2, n_head=4,
                      n_kv_head=2, max_seq_len=64, pos="rope", norm="rmsnorm", mlp="swiglu",
                      d_ff=128, bias=False)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("kvcache") / "small"
    save_checkpoint(Transformer(cfg).eval(), out, lm.tokenizer)
    return out


def post(server: Any, path: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/api/kvcache/{path}", json=body, timeout=300)


def test_memory_line_is_what_kvcache_allocates(server: Any, lm: Any) -> None:
    d = post(server, "memory", model="smollm2").json()
    own = d["series"][0]
    for t, b in zip(d["contexts"][:3], own["bytes"][:3], strict=True):
        cache = KVCache(lm.cfg, 1, t, dtype=lm.model.dtype)
        assert b == sum(x.numel() * x.element_size() for x in [*cache.k, *cache.v])
    assert [s["n_kv_head"] for s in d["series"]] == [3, 8, 32]


def test_trace_and_timing_on_a_checkpoint(server: Any, small_ckpt: Path, lm: Any) -> None:
    text, n = "The key and value of every", 5
    d = post(server, "trace", model=str(small_ckpt), text=text, n_new=n).json()
    ids = lm.tokenizer.encode(text)
    assert d["prompt_len"] == len(ids) and len(d["steps"]) == n
    assert d["steps"][0]["computed"] == [0, len(ids)]
    assert d["steps"][-1]["reused"] == [0, len(ids) + n - 2]
    import llmlab

    model = llmlab.load(str(small_ckpt)).model
    seq = list(ids)
    with torch.no_grad():  # the reference: the whole sequence again for every token
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert d["tokens"] == seq[len(ids):]
    t = post(server, "timing", model=str(small_ckpt), text=text, n_new=n).json()
    assert t["same_tokens"] and len(t["cached_ms"]) == len(t["recompute_ms"]) == n
    q = post(server, "quant", model=str(small_ckpt), text=text).json()
    assert q["layers"] == ["block 0", "block 1", "logits"]
    assert q["rel_error"]["fp32"] == [0, 0, 0] and min(q["rel_error"]["int4"]) > 0


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "minilm"}, "model"),
    ({"text": "word " * 200}, "text"),
    ({"n_new": 99}, "n_new"),
])
def test_bad_input_names_the_field(server: Any, body: dict, param: str) -> None:
    r = post(server, "trace", **body)
    assert r.status_code in (400, 422), r.text
    err = r.json()["error"]
    assert err["param"] == param or param in err["message"], err
