"""Per-token scores (explain/next_token.py) against transformers on the HF export."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from next_token_ref import hf_export, hf_scores, tiny_llama

from llmlab.explain.next_token import score_text

TEXT = "Classes provide a means of bundling data and functionality together. Café → ünïcode!"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimpleNamespace, torch.nn.Module]:
    return tiny_llama(tmp_path_factory.mktemp("hf") / "tiny")


def check_against_hf(lm: SimpleNamespace, ref: torch.nn.Module, text: str, k: int) -> None:
    res = score_text(lm, text, top_k=k)
    ids = torch.tensor([lm.tokenizer.encode(text)])
    logits, hf_nll, hf_loss = hf_scores(ref, ids[0].tolist())

    assert [t.id for t in res.tokens] == ids[0, 1:].tolist()
    assert res.first_id == ids[0, 0].item()
    ours = torch.tensor([t.surprisal for t in res.tokens])
    assert (ours - hf_nll).abs().max().item() <= 1e-4
    assert [t.logprob for t in res.tokens] == [-t.surprisal for t in res.tokens]
    p = logits.softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
    assert (torch.tensor([t.p for t in res.tokens]) - p).abs().max().item() <= 1e-5
    assert res.n_tokens == ids.shape[1]
    assert res.mean_nll == pytest.approx(hf_loss, abs=1e-4)
    assert res.perplexity == pytest.approx(math.exp(hf_loss), rel=1e-4)

    top_p, top_i = logits.softmax(-1).topk(k, dim=-1)
    got_p = torch.tensor([t.top_probs for t in res.tokens])
    assert (got_p - top_p).abs().max().item() <= 1e-5
    # Ids may swap only where two probabilities tie to within fp noise.
    got_i = torch.tensor([t.top_ids for t in res.tokens])
    assert (got_i == top_i).float().mean().item() > 0.99

    # Bytes of the predicted tokens = the text's UTF-8 bytes minus the first token's.
    first = lm.tokenizer.decode_bytes(ids[0, :1].tolist())
    n_bytes = len(text.encode("utf-8")) - len(first)
    assert res.n_bytes == n_bytes
    assert res.bits_per_byte == pytest.approx(
        hf_nll.sum().item() / math.log(2) / n_bytes, rel=1e-4)

    d = res.to_dict()
    assert len(d["tokens"]) == len(res.tokens) and isinstance(d["tokens"][0]["top_ids"], list)


def test_tiny_model_matches_transformers(tiny) -> None:
    check_against_hf(*tiny, TEXT, k=5)


def test_pieces_rebuild_the_text(tiny) -> None:
    lm, _ = tiny
    res = score_text(lm, "def f(x):\n    return x + 1\n", top_k=3)
    assert res.first_piece + "".join(t.piece for t in res.tokens) == "def f(x):\n    return x + 1\n"
    assert all(len(t.top_ids) == 3 and t.top_probs == sorted(t.top_probs, reverse=True)
               for t in res.tokens)


def test_bad_inputs_are_named(tiny) -> None:
    lm, _ = tiny
    with pytest.raises(ValueError, match="max_seq_len=128"):
        score_text(lm, "word " * 400)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        score_text(lm, "")
    with pytest.raises(ValueError, match="top_k"):
        score_text(lm, TEXT, top_k=0)


def test_model_left_in_training_mode_is_restored(tiny) -> None:
    lm, _ = tiny
    lm.model.train()
    try:
        score_text(lm, TEXT)
        assert lm.model.training
    finally:
        lm.model.eval()


def test_smollm2_matches_transformers(tmp_path: Path) -> None:
    import llmlab

    smol = llmlab.load("smollm2-135m-instruct")
    check_against_hf(smol, hf_export(smol, tmp_path / "smol"), TEXT, k=5)


def test_an_encoder_is_refused() -> None:
    from llmlab.model import ModelConfig, Transformer

    cfg = ModelConfig(vocab_size=64, d_model=16, n_layer=1, n_head=2, max_seq_len=16,
                      causal=False)
    enc = SimpleNamespace(name="enc", model=Transformer(cfg), tokenizer=None)
    with pytest.raises(ValueError, match="'enc' is a bidirectional encoder, not a causal"):
        score_text(enc, TEXT)
