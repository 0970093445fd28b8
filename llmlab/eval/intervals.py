"""95% confidence intervals for an eval result's metrics, from its per-item records.

A proportion over independent items (accuracy, pass@1 with one sample per problem) gets the
Wilson score interval; a mean of per-item scores (pass@k over several samples, ROUGE, EM, F1)
or a corpus statistic (BLEU) gets a seeded percentile bootstrap over items. Perplexity has
none: its tokens are one text, not independent draws. The judge reports its own (Wilson).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llmlab.tasks.metrics import pass_at_k, wilson_interval

BOOTSTRAP = 1000  # resamples for means; corpus BLEU is recomputed per resample, so fewer
BLEU_BOOTSTRAP = 200
LEVEL = 0.95


def bootstrap(n: int, stat: Callable[[np.ndarray], float], resamples: int = BOOTSTRAP,
              seed: int = 0) -> tuple[float, float]:
    """Percentile interval of `stat(indices)` over `resamples` draws of n items with
    replacement (seeded: the same report gives the same interval)."""
    if n < 1:
        raise ValueError("bootstrap over no items")
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(resamples)])
    lo, hi = np.quantile(vals, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)


def mean_ci(values: Sequence[float], seed: int = 0) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return bootstrap(len(v), lambda i: float(v[i].mean()), seed=seed)


def per_problem_counts(samples: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """HumanEval's (samples, passed) per problem, in first-seen order."""
    counts: dict[str, list[int]] = {}
    for s in samples:
        c = counts.setdefault(s["task_id"], [0, 0])
        c[0] += 1
        c[1] += s["status"] == "passed"
    return [(n, c) for n, c in counts.values()]


def _humaneval(metrics: dict[str, Any], samples: list[dict[str, Any]], seed: int
               ) -> dict[str, tuple[float, float, str]]:
    counts = per_problem_counts(samples)
    out = {}
    for m in metrics:
        if not m.startswith("pass@"):
            continue
        k = int(m[5:])
        if all(n == 1 for n, _ in counts):  # one greedy sample each: a proportion
            out[m] = (*wilson_interval(sum(c for _, c in counts), len(counts)), "wilson")
        else:
            per = [pass_at_k(n, c, k) for n, c in counts]
            out[m] = (*mean_ci(per, seed), "bootstrap")
    return out


def _gen(samples: list[dict[str, Any]], seed: int) -> dict[str, tuple[float, float, str]]:
    from llmlab.tasks.text import bleu, squad

    preds = [s["output"] for s in samples]
    refs = [s["reference"] for s in samples]
    out = {"rougeL": (*mean_ci([s["rougeL"] for s in samples], seed), "bootstrap")}
    out["bleu"] = (*bootstrap(len(preds), lambda i: bleu([preds[j] for j in i],
                                                         [refs[j] for j in i]),
                              BLEU_BOOTSTRAP, seed), "bootstrap")
    per = [squad([p], [r]) for p, r in zip(preds, refs, strict=True)]
    for m in ("exact_match", "f1"):
        out[m] = (*mean_ci([x[m] for x in per], seed), "bootstrap")
    return out


def intervals(task: str, metrics: dict[str, Any], samples: list[dict[str, Any]],
              seed: int = 0) -> dict[str, dict[str, Any]]:
    """{metric: {"low", "high", "method"}} for the metrics of one task result that have an
    interval; `samples` must be all of the result's items (before any are left out)."""
    name = task.split(":")[0]
    found: dict[str, tuple[float, float, str]] = {}
    if name in ("arithmetic", "trivia") and samples:
        found["accuracy"] = (*wilson_interval(sum(bool(s["correct"]) for s in samples),
                                              len(samples)), "wilson")
        if name == "trivia":
            for m in ("exact_match", "f1"):
                found[m] = (*mean_ci([s[m] for s in samples], seed), "bootstrap")
    elif name == "humaneval" and samples:
        found = _humaneval(metrics, samples, seed)
    elif name == "gen" and samples:
        found = _gen(samples, seed)
    elif name == "judge" and "ci95_low" in metrics:
        found["win_rate"] = (metrics["ci95_low"], metrics["ci95_high"], "wilson")
    return {m: {"low": lo, "high": hi, "method": how} for m, (lo, hi, how) in found.items()}
