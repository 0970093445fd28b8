"""Matchers, pass@k and intervals against their definitions and outside references."""

from __future__ import annotations

import itertools
import math

import pytest

from llmlab.eval.metrics import (
    answer_match,
    exact_match,
    final_number,
    mean_pass_at_k,
    number_match,
    pass_at_k,
    token_f1,
    wilson_interval,
)


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (10, 3, 1), (10, 3, 5), (20, 1, 10),
                                   (200, 17, 1), (200, 17, 10), (200, 17, 100), (5, 4, 2)])
def test_pass_at_k_matches_closed_form(n: int, c: int, k: int) -> None:
    # Chen et al. (2021), eq. 1: 1 - C(n-c, k) / C(n, k), exact integer arithmetic.
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_is_the_chance_a_random_k_subset_has_a_pass() -> None:
    samples = [True, False, False, True, False, False]
    subsets = list(itertools.combinations(samples, 3))
    want = sum(any(s) for s in subsets) / len(subsets)
    assert pass_at_k(6, 2, 3) == pytest.approx(want)


def test_pass_at_k_bad_counts() -> None:
    with pytest.raises(ValueError, match="at least 5 samples"):
        pass_at_k(3, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="empty"):
        mean_pass_at_k([], 1)
    assert mean_pass_at_k([(4, 0), (4, 4)], 1) == pytest.approx(0.5)


@pytest.mark.parametrize("pred,accepted", [
    ("The answer is 1,000.", ["1000"]),
    ("1000", ["1,000"]),
    ("the Eiffel Tower", ["Eiffel tower"]),
    ("I think it's The Beatles!", ["Beatles"]),
    ("Café", ["cafe"]),
    ("It is Paris, France.", ["Paris"]),
])
def test_answer_match_accepts_equivalent_forms(pred: str, accepted: list[str]) -> None:
    assert answer_match(pred, accepted)


@pytest.mark.parametrize("pred,accepted", [
    ("10001", ["1000"]),
    ("1000.5", ["1000"]),
    ("Parisian", ["Paris"]),
    ("Beatle", ["Beatles"]),
    ("", ["Paris"]),
    ("the", ["a"]),
])
def test_answer_match_rejects_near_misses(pred: str, accepted: list[str]) -> None:
    assert not answer_match(pred, accepted)


def test_final_number() -> None:
    assert final_number("3 apples plus 4 is 7") == 7
    assert final_number("#### 1,234\nextra 5") == 1234
    assert final_number("The answer is -12. Check: 3 * -4") == -12
    assert final_number("no digits") is None
    assert number_match("So she has 1,000 now.", 1000.0)
    assert not number_match("So she has 100 now.", 1000.0)


def test_squad_exact_match_and_f1() -> None:
    # Worked values from the SQuAD v1.1 evaluation script's definitions.
    assert exact_match("The Cat!", "cat") == 1.0
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert token_f1("dog", "cat") == 0.0


def test_wilson_matches_scipy() -> None:
    from scipy import stats
    for k, n in [(0, 10), (7, 10), (81, 263), (50, 50)]:
        ci = stats.binomtest(k, n).proportion_ci(method="wilson")
        lo, hi = wilson_interval(k, n)
        assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-9)
