"""The preferences page's library numbers: the length baseline against a direct count of
completion tokens, and the Bradley-Terry view of one pair against its definition."""

from __future__ import annotations

import math

import pytest
import torch

from llmlab.align.data import pref_tensors
from llmlab.align.reward import length_baseline
from llmlab.tokenizer import load_tokenizer
from llmlab.tokenizer.chat_template import TEMPLATES

PAIRS = [("2 + 2?", "4", "The answer is five, I think."),
         ("3 + 4?", "Adding 3 and 4 gives 7. The answer is 7.", "8"),
         ("1 + 1?", "2", "3"),
         ("5 + 5?", "ten", "It is 11"),
         ("6 - 1?", "The answer is 5.", "It is 4, for sure, no doubt.")]


@pytest.mark.parametrize("split", [1, 2, 5])
def test_length_baseline_is_a_direct_count(split: int) -> None:
    tok, tpl = load_tokenizer("smollm2"), TEMPLATES["chatml"]
    pairs = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS]
    t = pref_tensors(tok, tpl, pairs, 256)
    batches = [{k: v[i:i + split] for k, v in t.items()} for i in range(0, len(pairs), split)]
    got = length_baseline(batches)
    # Completion tokens as the model reads them: the text and the end-of-turn token.
    n = [(len(tok.encode(c + tpl.stop[0], allowed_special="all")),
          len(tok.encode(r + tpl.stop[0], allowed_special="all"))) for _, c, r in PAIRS]
    shorter = sum(a < b for a, b in n) + sum(a == b for a, b in n) / 2
    longer = sum(a > b for a, b in n) + sum(a == b for a, b in n) / 2
    assert sum(a == b for a, b in n) >= 1  # the tie rule is exercised
    assert got["shorter_wins"] == pytest.approx(shorter / len(n))
    assert got["longer_wins"] == pytest.approx(longer / len(n))
    assert got["length_baseline"] == pytest.approx(max(shorter, longer) / len(n))
    assert got["length_rule"] == ("shorter" if shorter >= longer else "longer")


def test_score_pair_is_bradley_terry_of_the_scores() -> None:
    """σ(r_c − r_r) and −log σ of it, from a reward model's own scores of both sides."""
    from llmlab.align.prefs_view import score_pair
    from llmlab.align.reward import ScalarHead
    from llmlab.model import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=49152, d_model=32, n_layer=1, n_head=2, n_kv_head=1,
                      max_seq_len=256, pos="rope", norm="rmsnorm", mlp="swiglu", d_ff=64,
                      bias=False, tie_embeddings=True)
    rm = ScalarHead(Transformer(cfg)).eval()
    tok, tpl = load_tokenizer("smollm2"), TEMPLATES["chatml"]
    out = score_pair(rm, tok, tpl, "2 + 2?", "4", "The answer is five.")
    with torch.no_grad():
        rc = rm.score(torch.tensor([out["chosen_ids"]]), torch.ones(1, len(out["chosen_ids"])))
        rr = rm.score(torch.tensor([out["rejected_ids"]]),
                      torch.ones(1, len(out["rejected_ids"])))
    assert out["r_chosen"] == pytest.approx(float(rc), abs=1e-5)
    assert out["r_rejected"] == pytest.approx(float(rr), abs=1e-5)
    d = float(rc - rr)
    assert out["p_chosen"] == pytest.approx(1 / (1 + math.exp(-d)), abs=1e-6)
    assert out["loss"] == pytest.approx(math.log1p(math.exp(-d)), abs=1e-6)
