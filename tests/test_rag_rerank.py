"""The SmolLM2 reranker's batched scoring (shared prefix, right padding, logits only where
needed) against transformers running each prompt alone, on a random Llama with SmolLM2's
vocabulary; and the rank interpolation against its definition."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from llmlab.model import ModelConfig, Transformer
from llmlab.rag.chunk import default_tokenizer
from llmlab.rag.rerank import LLMReranker, interpolate, rank_scores
from llmlab.weights.hf import save_hf

PASSAGES = [
    "The for statement iterates over the items of any sequence, in the order they appear.",
    "Lists are mutable.",
    "Exceptions are raised with raise; try and except handle them, and finally always "
    "runs, whether or not an exception occurred, which makes it the place for clean-up.",
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[LLMReranker, torch.nn.Module]:
    from transformers import AutoModelForCausalLM

    tok = default_tokenizer()
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=49152, d_model=64, n_layer=2, n_head=4, n_kv_head=2,
                      max_seq_len=512, pos="rope", norm="rmsnorm", mlp="swiglu", d_ff=128,
                      bias=False, tie_embeddings=True)
    model = Transformer(cfg).eval()
    with torch.no_grad():  # a sharper distribution than the init's, so differences show
        model.model.embed_tokens.weight.mul_(20)
    out = save_hf(model, tmp_path_factory.mktemp("hf"))
    ref = AutoModelForCausalLM.from_pretrained(out).eval()
    rr = LLMReranker(lm=SimpleNamespace(model=model, tokenizer=tok), bf16=False)
    return rr, ref


@pytest.mark.parametrize("kind", ["upr", "yesno"])
def test_batched_scores_match_transformers_one_by_one(pair, kind: str) -> None:
    rr, ref = pair
    query = "How do I clean up after an exception?"
    b = (rr.upr_batch if kind == "upr" else rr.yesno_batch)(query, PASSAGES)
    assert len({len(r) for r in b.rows}) > 1  # padding is exercised
    assert len(b.prefix) > 0
    span, yn = rr.forward(b)
    for i, row in enumerate(b.rows):
        ids = torch.tensor([b.prefix + row])
        with torch.no_grad():
            lp = ref(ids).logits[0].float().log_softmax(-1)
        p = len(b.prefix)
        s, e = b.spans[i]
        if e > s:  # token at p+j is predicted by position p+j-1
            want = lp[p + s - 1 : p + e - 1].gather(1, ids[0, p + s : p + e, None]).mean()
            assert span[i] == pytest.approx(want.item(), abs=1e-4)
        assert yn[i] == pytest.approx(lp[-1, [rr.yes, rr.no]].numpy(), abs=1e-4)
    rr.scorer = kind
    score = rr.score(query, PASSAGES)
    assert score == pytest.approx(span if kind == "upr" else yn[:, 0] - yn[:, 1], abs=1e-6)


def test_upr_span_is_the_query() -> None:
    tok = default_tokenizer()
    rr = LLMReranker(lm=SimpleNamespace(model=None, tokenizer=tok), bf16=False)
    b = rr.upr_batch("what is  a list?", PASSAGES)
    for row, (s, e) in zip(b.rows, b.spans, strict=True):
        assert tok.decode(row[s:e]) == " what is a list?"
        assert tok.decode(row[:s]).endswith("Question:")


def test_interpolation() -> None:
    s = np.array([0.1, 0.9, 0.5, 0.2])
    assert rank_scores(s).tolist() == [0.25, 1.0, 0.75, 0.5]
    assert np.argsort(-interpolate(s, 0.0), kind="stable").tolist() == [0, 1, 2, 3]
    assert np.argsort(-interpolate(s, 1.0)).tolist() == [1, 2, 3, 0]  # scorer order
    first = np.array([0.05, 0.04, 0.03, 0.01])  # e.g. RRF scores, best first
    want = 0.7 * (first - 0.01) / 0.04 + 0.3 * (s - 0.1) / 0.8
    assert interpolate(s, 0.3, first) == pytest.approx(want)
    assert interpolate(np.ones(3), 0.5, [2.0, 2.0, 2.0]).tolist() == [1.0, 1.0, 1.0]


def test_bad_settings_are_named() -> None:
    lm = SimpleNamespace(model=None, tokenizer=default_tokenizer())
    with pytest.raises(ValueError, match="upr, yesno"):
        LLMReranker(lm=lm, scorer="cross")
    with pytest.raises(ValueError, match="weight"):
        LLMReranker(lm=lm, weight=1.5)
