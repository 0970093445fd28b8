"""The Inside-the-model endpoints on the session's real models: the lens's last row against
the model's own forward pass, head maps for an encoder, patching on a small checkpoint, the
sink toggle, and 4xx errors that name their field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import torch


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory: pytest.TempPathFactory, lm: Any) -> Path:
    """A tiny random causal model with SmolLM2's tokenizer, saved as a checkpoint dir."""
    from llmlab.model import ModelConfig, Transformer
    from llmlab.weights.registry import save_checkpoint

    cfg = ModelConfig(vocab_size=lm.cfg.vocab_size, d_model=32, n_layer=2, n_head=2,
                      n_kv_head=1, max_seq_len=32, pos="rope", norm="rmsnorm", mlp="swiglu",
                      d_ff=64, bias=False)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("inside") / "small"
    save_checkpoint(Transformer(cfg).eval(), out, lm.tokenizer)
    return out


def post(server: Any, path: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/api/inside/{path}", json=body, timeout=300)


def test_lens_last_row_is_the_models_prediction(server: Any, lm: Any) -> None:
    text = "The capital of France is"
    # top_k=5 as the page asks: the browser test then finds this run in the server's cache.
    r = post(server, "lens", text=text, model="smollm2", top_k=5)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["n_layers"] == 30 and len(d["top_ids"]) == 31 and len(d["layer_labels"]) == 31
    ids = torch.tensor([lm.tokenizer.encode(text)])
    with torch.no_grad():
        p = lm.model(ids).logits[0].float().softmax(-1)
    top_p, top_i = p.topk(5, dim=-1)
    assert d["top_ids"][-1] == top_i.tolist()
    assert (torch.tensor(d["top_probs"][-1]) - top_p).abs().max() <= 1e-4
    assert d["top_pieces"][-1][-1][0] == " Paris"


def test_head_maps_for_an_encoder_and_a_decoder(server: Any) -> None:
    d = post(server, "heads", model="minilm", n=8).json()
    assert len(d["scores"]["previous"]) == 6 and len(d["scores"]["previous"][0]) == 12
    assert d["copying"] is None  # an encoder has no LM head to copy into
    assert len(d["ids"]) == 16 and d["ids"][:8] == d["ids"][8:]


def test_patch_sweep_on_a_checkpoint(server: Any, small_ckpt: Path) -> None:
    r = post(server, "patch", model=str(small_ckpt), clean="The Eiffel Tower is in",
             corrupt="The Colosseum is in", answer=" Paris", wrong=" Rome")
    assert r.status_code == 200, r.text
    d = r.json()
    assert len(d["restored"]) == 3 and len(d["restored"][0]) == 6
    assert d["restored"][-1][-1] == pytest.approx(1.0, abs=1e-3)
    assert (d["answer"], d["wrong"]) == (" Paris", " Rome")


def test_sink_toggle_renormalises(server: Any) -> None:
    d = post(server, "sinks", model="smollm2", layer=5, head=1, remove_sink=True).json()
    w = torch.tensor(d["weights"])
    assert w[1:, 0].abs().max() == 0
    assert torch.allclose(w.sum(-1), torch.ones(len(w)), atol=1e-3)
    share = torch.tensor(d["share"])
    assert share.shape == (30, 9) and share.min() >= 0 and share.max() <= 1


def test_prompt_ab_sides_equal_the_single_prompt_views(server: Any, lm: Any) -> None:
    a, b = "The capital of France is", "The capital of Italy is"
    d = post(server, "ab", a=a, b=b, model="smollm2", layer=5, head=1, top_k=5).json()
    for side, text in ((d["a"], a), (d["b"], b)):
        lens = post(server, "lens", text=text, model="smollm2", top_k=5).json()
        assert side["lens"]["top_ids"] == lens["top_ids"]
        att = httpx.post(f"{server.url}/api/attention", timeout=300,
                         json={"text": text, "model": "smollm2", "layer": 5, "head": 1}).json()
        assert side["tokens"] == att["tokens"]
        w = torch.tensor(side["attention"]) - torch.tensor(att["weights"][0])
        assert w.abs().max() < 1e-3
        # The next-token distribution: the model's own forward pass, outside the lens code.
        with torch.no_grad():
            logits = lm.model(torch.tensor([lm.tokenizer.encode(text)])).logits
        p = logits[0, -1].float().softmax(-1)
        assert side["next_ids"] == p.topk(5).indices.tolist()
        moved = {m["id"]: m for m in d["moved"]}
        paris = lm.tokenizer.encode(" Paris")[0]
        assert paris in moved and moved[paris]["delta"] < -0.1  # Italy's answer is not Paris
    assert d["lens_same_top"][-1] is False and d["tv"] > 0.1
    assert len(d["lens_tv"]) == len(d["layer_labels"]) == 31


def test_prompt_ab_of_a_prompt_with_itself_is_no_difference(server: Any) -> None:
    d = post(server, "ab", a="Hello there", b="Hello there", layer=2, head=3).json()
    assert d["a"] == d["b"] and d["tv"] == 0 and max(d["lens_tv"]) == 0
    assert all(d["lens_same_top"]) and all(m["delta"] == 0 for m in d["moved"])


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("lens", {"model": "minilm"}, "model"),
        ("ablate", {"kind": "head", "layer": 2, "head": 9}, "head"),
        ("ablate", {"kind": "mlp", "layer": 30}, "site"),
        ("patch", {"clean": "The Eiffel Tower is in Paris", "corrupt": "Rome"}, "corrupt"),
        ("patch", {"answer": " Paris France"}, "answer"),
        ("sinks", {"layer": 30}, "layer"),
        ("heads", {"n": 2}, "n"),
        ("ab", {"layer": 30}, "layer"),
        ("ab", {"head": 9}, "head"),
        ("ab", {"b": ""}, "b"),
        ("ab", {"model": "minilm"}, "model"),
    ],
)
def test_bad_input_names_the_field(server: Any, path: str, body: dict, param: str) -> None:
    r = post(server, path, **body)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["param"] == param, r.text
