"""POST /api/next_token against transformers on the HF export (issue #21: <= 1e-4, fp32)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from next_token_ref import hf_export, hf_scores

TEXT = "In the beginning God created the heaven and the earth. Café → ünïcode!"


@pytest.fixture(scope="module")
def short_ckpt(tmp_path_factory: pytest.TempPathFactory, lm: Any) -> Path:
    """A tiny random causal model with SmolLM2's tokenizer and a 16-token context, saved
    as a checkpoint directory (the server fixture accepts directory paths as models)."""
    from llmlab.model import ModelConfig, Transformer
    from llmlab.weights.registry import save_checkpoint

    cfg = ModelConfig(vocab_size=lm.cfg.vocab_size, d_model=16, n_layer=1, n_head=2,
                      n_kv_head=1, max_seq_len=16, pos="rope", norm="rmsnorm", mlp="swiglu",
                      d_ff=32, bias=False)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("short") / "short"
    save_checkpoint(Transformer(cfg).eval(), out, lm.tokenizer)
    return out


def post(server: Any, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/api/next_token", json=body, timeout=300)


def check_row(row: dict, lm: Any, ref: torch.nn.Module, text: str) -> None:
    ids = lm.tokenizer.encode(text)
    logits, hf_nll, hf_loss = hf_scores(ref, ids)
    toks = row["tokens"]
    assert [t["id"] for t in toks] == ids
    if text.isascii():  # elsewhere a character split over tokens shows as \xNN pieces
        assert "".join(t["piece"] for t in toks) == text
    first = toks[0]
    assert first["p"] is None and first["nll"] is None and first["top"] == []
    nll = torch.tensor([t["nll"] for t in toks[1:]])
    assert (nll - hf_nll).abs().max().item() <= 1e-4
    p = logits.softmax(-1)
    got_p = torch.tensor([t["p"] for t in toks[1:]])
    assert (got_p - p.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]).abs().max() <= 1e-5
    top_p = p.topk(len(toks[1]["top"]), dim=-1).values
    got_top = torch.tensor([[g["p"] for g in t["top"]] for t in toks[1:]])
    assert (got_top - top_p).abs().max() <= 1e-5
    assert row["mean_nll"] == pytest.approx(hf_loss, abs=1e-4)
    assert row["perplexity"] == pytest.approx(math.exp(hf_loss), rel=1e-4)
    n_bytes = len(text.encode()) - len(lm.tokenizer.decode_bytes(ids[:1]))
    assert row["n_bytes"] == n_bytes
    assert row["bits_per_byte"] == pytest.approx(hf_nll.sum().item() / math.log(2) / n_bytes,
                                                 rel=1e-4)
    assert (row["n_tokens"], row["n_scored"]) == (len(ids), len(ids) - 1)


def test_smollm2_and_a_checkpoint_match_transformers(server, lm, short_ckpt, tmp_path) -> None:  # noqa: ANN001
    import llmlab

    text = "And God said, Let there be light"  # under the checkpoint's 16 tokens
    r = post(server, text=text, models=["smollm2", str(short_ckpt)], top_k=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["sources"][0] == "next_token.score"
    smol, short = body["rows"]
    assert (smol["model"], short["model"], short["model_name"]) == (
        "smollm2", str(short_ckpt), "short")
    ref = hf_export(lm, tmp_path / "smol")
    check_row(smol, lm, ref, text)
    small = llmlab.load(short_ckpt)
    check_row(short, small, hf_export(small, tmp_path / "short"), text)

    # A longer text, one model, more guesses.
    r = post(server, text=TEXT, models=["smollm2"], top_k=20)
    assert r.status_code == 200, r.text
    (row,) = r.json()["rows"]
    assert all(len(t["top"]) == 20 for t in row["tokens"][1:])
    check_row(row, lm, ref, TEXT)


def param(r: httpx.Response) -> str:
    return r.json()["error"]["param"]


def test_errors_name_the_field(server, short_ckpt) -> None:  # noqa: ANN001
    too_long = post(server, text="a" * (server.hub.cfg.max_text_chars + 1))
    assert too_long.status_code == 400 and param(too_long) == "text"
    over_ctx = post(server, text="word " * 40, models=["smollm2", str(short_ckpt)])
    assert over_ctx.status_code == 400 and param(over_ctx) == "text"
    assert "max_seq_len=16" in over_ctx.json()["error"]["message"]
    one = post(server, text="a")
    assert one.status_code == 400 and param(one) == "text"

    for name in ("nope", "local:nope", "/definitely/not/a/dir"):
        r = post(server, text=TEXT, models=[name])
        assert r.status_code == 400 and param(r) == "models", r.text
    enc = post(server, text=TEXT, models=["smollm2", "minilm"])
    assert enc.status_code == 400 and param(enc) == "models"
    assert "not a causal language model" in enc.json()["error"]["message"]

    for bad in ({"models": []}, {"models": ["smollm2"] * 3}):
        r = post(server, text=TEXT, **bad)
        assert r.status_code == 422 and param(r) == "models"
    for k in (0, 21):
        r = post(server, text=TEXT, top_k=k)
        assert r.status_code == 422 and param(r) == "top_k"
