"""Hybrid ranking: reciprocal-rank fusion and weighted fusion of min-max normalised scores."""

from __future__ import annotations

from collections.abc import Sequence

# Retrieval methods: one retriever each, or both fused. Here (no numpy/torch) so the CLI can
# list them without loading the engine.
METHODS = ("dense", "bm25", "hybrid")

FUSIONS = ("rrf", "weighted")


def rrf(rankings: Sequence[Sequence[str]], k: int = 60) -> list[tuple[str, float]]:
    """Cormack et al. (2009): score(d) = sum over rankings of 1 / (k + rank(d)), rank from 1.

    Ties break by first appearance, so the result is deterministic.
    """
    if k < 0:
        raise ValueError(f"rrf k must be >= 0, got {k}")
    scores: dict[str, float] = {}
    for ranking in rankings:
        for r, key in enumerate(ranking, 1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + r)
    return sorted(scores.items(), key=lambda kv: -kv[1])


def minmax(scores: Sequence[float]) -> list[float]:
    """Scale to [0, 1]; all-equal scores become 1 (each is the best of its list)."""
    if not scores:
        return []
    lo, hi = min(scores), max(scores)
    return [1.0] * len(scores) if hi == lo else [(s - lo) / (hi - lo) for s in scores]


def weighted(
    runs: Sequence[Sequence[tuple[str, float]]], weights: Sequence[float]
) -> list[tuple[str, float]]:
    """sum_i w_i * minmax(scores_i)(d); a document missing from a run gets 0 from it."""
    if len(runs) != len(weights):
        raise ValueError(f"weighted fusion: {len(runs)} runs but {len(weights)} weights")
    out: dict[str, float] = {}
    for run, w in zip(runs, weights, strict=True):
        for (key, _), s in zip(run, minmax([s for _, s in run]), strict=True):
            out[key] = out.get(key, 0.0) + w * s
    return sorted(out.items(), key=lambda kv: -kv[1])
