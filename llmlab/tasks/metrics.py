"""Scoring primitives: answer normalisation and matching, pass@k, confidence intervals,
and a paired test."""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\$?\d[\d,]*(?:\.\d+)?")
_PUNCT = frozenset(string.punctuation)
_THOUSANDS = re.compile(r"^\d{1,3}(,\d{3})+(\.\d+)?$")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, strip accents, punctuation and articles, squeeze spaces."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = "".join(c for c in text if c not in _PUNCT)  # deleted, as SQuAD does: "levi's"
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def parse_number(text: str) -> float | None:
    """A number as written by people: "1,000" = "1000" = "1000.0"; None when not a number."""
    t = text.strip().replace("$", "").rstrip(".")
    if "," in t:
        if not _THOUSANDS.match(t.lstrip("+-")):
            return None  # "1,00" is not a thousands grouping
        t = t.replace(",", "")
    try:
        v = float(t)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def numbers_in(text: str) -> list[float]:
    out = []
    for m in _NUMBER.finditer(text):
        v = parse_number(m.group())
        if v is not None:
            out.append(v)
    return out


def final_number(text: str) -> float | None:
    """The answer a model gives to an arithmetic problem: the last number it writes
    (a "#### N" or "answer is N" marker wins when present)."""
    for marker in ("####", "answer is", "answer:"):
        at = text.lower().rfind(marker)
        if at != -1:
            found = numbers_in(text[at + len(marker) :])
            if found:
                return found[0]
    found = numbers_in(text)
    return found[-1] if found else None


def number_match(prediction: str, target: float, tol: float = 1e-6) -> bool:
    got = final_number(prediction)
    return got is not None and abs(got - target) <= tol * max(1.0, abs(target))


def _is_numeric(s: str) -> bool:
    return parse_number(s) is not None


def answer_match(prediction: str, accepted: Iterable[str]) -> bool:
    """True when the prediction states one of the accepted answers.

    Exact match after normalisation, or the normalised answer appears as a whole-word span
    of the (possibly chatty) prediction. Numeric answers compare as numbers, so "1,000"
    matches "1000" but "10001" does not.
    """
    pred = normalize_answer(prediction)
    pred_words = f" {pred} "
    for ans in accepted:
        if _is_numeric(ans):
            want = parse_number(ans)
            if any(abs(v - want) < 1e-9 for v in numbers_in(prediction)):  # type: ignore[operator]
                return True
            continue
        norm = normalize_answer(ans)
        if not norm:
            continue
        if pred == norm or f" {norm} " in pred_words:
            return True
    return False


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token-overlap F1 over normalised words."""
    p, r = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not p or not r:
        return float(p == r)
    common: dict[str, int] = {}
    for w in p:
        common[w] = common.get(w, 0) + 1
    overlap = 0
    for w in r:
        if common.get(w, 0) > 0:
            overlap += 1
            common[w] -= 1
    if overlap == 0:
        return 0.0
    prec, rec = overlap / len(p), overlap / len(r)
    return 2 * prec * rec / (prec + rec)


# ---- pass@k --------------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), computed as a stable
    product so large n does not overflow."""
    if not (0 <= c <= n) or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Average pass@k over problems given (n samples, c correct) per problem."""
    if not counts:
        raise ValueError("pass@k over an empty problem set")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


# ---- intervals -----------------------------------------------------------------------------
def wilson_interval(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a proportion (95% by default); ties may count as half."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar(before: Sequence[int], after: Sequence[int]) -> dict[str, float | int | tuple]:
    """Exact two-sided McNemar test on paired 0/1 outcomes (a binomial test on the
    discordant pairs), and the accuracy gain with a 95% Wald interval on paired diffs."""
    b = sum(1 for x, y in zip(before, after, strict=True) if x and not y)  # lost
    c = sum(1 for x, y in zip(before, after, strict=True) if y and not x)  # gained
    k, m = min(b, c), b + c
    p = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m) if m else 1.0
    n = len(before)
    d = [y - x for x, y in zip(before, after, strict=True)]
    mean = sum(d) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n)
    return {"gained": c, "lost": b, "p_value": p, "gain": mean,
            "gain_ci95": (mean - 1.96 * se, mean + 1.96 * se)}
