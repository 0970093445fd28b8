"""Text metrics against published values and hand-derived definitions."""

from __future__ import annotations

import pytest

from llmlab.tasks.text import bleu, rouge, squad, text_metrics


def test_bleu_matches_sacrebleu_readme() -> None:
    # The corpus example from sacrebleu's README, published as "BLEU = 48.53".
    refs = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
            ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
    hyps = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    assert bleu(hyps, refs) == pytest.approx(48.53, abs=0.005)


def test_rouge_matches_definition_on_rouge_score_readme_pair() -> None:
    # rouge-score README's pair. ROUGE-1: 6 shared unigrams of 8 (pred) / 9 (target);
    # ROUGE-2: 2 shared bigrams of 7 / 8; ROUGE-L: LCS "the quick brown jumps the" = 5.
    r = rouge(["The quick brown dog jumps on the log."],
              ["The quick brown fox jumps over the lazy dog"])
    assert r["rouge1"] == pytest.approx(2 * 6 / (8 + 9))
    assert r["rouge2"] == pytest.approx(2 * 2 / (7 + 8))
    assert r["rougeL"] == pytest.approx(2 * 5 / (8 + 9))


def test_squad_em_f1_best_over_references() -> None:
    s = squad(["the Denver Broncos", "Santa Clara"],
              [["Denver Broncos", "Broncos"], ["Levi's Stadium in Santa Clara, California"]])
    assert s["exact_match"] == pytest.approx(0.5)
    # second: 2 shared tokens, precision 2/2, recall 2/6 (levis stadium in santa clara california)
    assert s["f1"] == pytest.approx((1.0 + 2 * 1 * (2 / 6) / (1 + 2 / 6)) / 2)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        text_metrics(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="lists of strings"):
        rouge("abc", "abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        squad([], [])
