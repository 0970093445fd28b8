"""Reference-based text metrics: BLEU (sacrebleu), ROUGE-1/2/L (rouge-score), and
SQuAD-style exact match and token F1 (llmlab.tasks.metrics)."""

from __future__ import annotations

from collections.abc import Sequence

from llmlab.tasks.metrics import exact_match, token_f1


def _check(preds: Sequence[str], refs: Sequence[str]) -> None:
    if isinstance(preds, str) or isinstance(refs, str):
        raise TypeError("text metrics take lists of strings, not a single string")
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise ValueError("text metrics over an empty set")


def bleu(preds: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (0-100), sacrebleu defaults (13a tokenisation, exp smoothing).

    `refs` is one reference per prediction, or several reference streams (lists of the same
    length as `preds`) in sacrebleu's layout.
    """
    import sacrebleu  # half a second to import: only when BLEU is asked for

    streams = [list(refs)] if refs and isinstance(refs[0], str) else [list(r) for r in refs]
    for s in streams:
        _check(preds, s)
    return float(sacrebleu.corpus_bleu(list(preds), streams).score)


def rouge(preds: Sequence[str], refs: Sequence[str], stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (0-1) with Porter stemming, as rouge-score computes them."""
    from rouge_score import rouge_scorer  # seconds to import (nltk): only for ROUGE

    _check(preds, refs)
    sc = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=stemmer)
    tot = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for p, r in zip(preds, refs, strict=True):
        for k, s in sc.score(r, p).items():  # rouge-score takes (target, prediction)
            tot[k] += s.fmeasure
    return {k: v / len(preds) for k, v in tot.items()}


def squad(preds: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and token F1 (0-1, as the trivia task reports them), best over each item's
    accepted references."""
    _check(preds, refs)
    alts = [[r] if isinstance(r, str) else list(r) for r in refs]
    em = sum(max(exact_match(p, a) for a in al) for p, al in zip(preds, alts, strict=True))
    f1 = sum(max(token_f1(p, a) for a in al) for p, al in zip(preds, alts, strict=True))
    return {"exact_match": em / len(preds), "f1": f1 / len(preds)}


def text_metrics(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """BLEU on sacrebleu's 0-100 scale; ROUGE, exact match and F1 as fractions (0-1)."""
    return {"bleu": bleu(preds, refs), **rouge(preds, refs), **squad(preds, refs)}
