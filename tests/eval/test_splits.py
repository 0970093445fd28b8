"""The trivia hash split is shared by SFT, RL prompts and eval: disjoint, a partition, stable."""

from __future__ import annotations

import hashlib

from llmlab.align.data import task_prompts
from llmlab.data.splits import held_out
from llmlab.data.trivia import TEST_FRACTION, trivia_items
from llmlab.tasks.arithmetic import arithmetic_problems
from llmlab.tasks.base import sample
from llmlab.tasks.trivia import TRIVIA_LISTS, trivia_questions
from llmlab.train.sft_data import trivia_examples


def _independent_held_out(key: str, fraction: float) -> bool:
    # The rule written out again from its definition: first 32 bits of SHA-256, as a fraction.
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") / (2**32 - 1) \
        < fraction


def test_sft_train_and_eval_test_are_disjoint() -> None:
    sft_train = {e["question"] for e in trivia_examples("train")}
    sft_test = {e["question"] for e in trivia_examples("test")}
    eval_test = {q.question for q in trivia_questions("test")}
    everything = {it["question"] for it in trivia_items()}
    assert len(eval_test) > 200
    assert not sft_train & eval_test
    assert eval_test <= sft_test
    assert sft_train | sft_test == everything and not sft_train & sft_test
    # Every item sits on the side an independent computation of the hash rule says.
    for q in everything:
        assert (q in sft_test) == _independent_held_out(q, TEST_FRACTION)
    assert 0.08 < len(sft_test) / len(everything) < 0.12


def test_rl_trivia_prompts_come_from_the_train_split() -> None:
    eval_test = {q.question for q in trivia_questions("test")}
    rl = task_prompts("trivia", n=10_000, split="train")
    assert len(rl) > 1000
    rl_questions = {p["prompt"].split("\n\n", 1)[1] for p in rl}
    assert not rl_questions & eval_test


def test_split_is_stable_across_calls_seeds_and_list_order() -> None:
    a = [q.question for q in trivia_questions("test")]
    b = [q.question for q in trivia_questions("test", tuple(reversed(TRIVIA_LISTS)))]
    assert a == b
    for seed in (0, 1, 7):  # --limit/--seed only pick among test questions
        assert {q.question for q in sample(trivia_questions("test"), 30, seed)} <= set(a)
    assert all(held_out(q, TEST_FRACTION) for q in a)


def test_arithmetic_uses_the_same_split_rule() -> None:
    test = arithmetic_problems(40, split="test", seed=1)
    train = arithmetic_problems(200, split="train", seed=1)
    assert all(_independent_held_out(p.question, 0.2) for p in test)
    assert not any(_independent_held_out(p.question, 0.2) for p in train)


def test_gen_pydocs_references_are_held_out_from_sft() -> None:
    from llmlab.eval.tasks import _gen_items
    from llmlab.tasks.pydocs import pydocs_examples

    items = _gen_items("pydocs")
    train = {e["question"] for e in pydocs_examples("train")}
    assert len(items) > 300 and not {p for p, _ in items} & train
    assert all(_independent_held_out(p, 0.1) for p, _ in items)


def test_easy_arithmetic_answers_and_split() -> None:
    import re

    test = arithmetic_problems(60, split="test", level="easy")
    train = {p.question for p in arithmetic_problems(300, split="train", level="easy")}
    assert all(_independent_held_out(p.question, 0.2) for p in test)
    assert not {p.question for p in test} & train
    for p in test:  # the answer read back from the question text, independently
        a, b = (int(x) for x in re.findall(r"\d+", p.question))
        want = a + b if "more" in p.question else a - b
        assert p.target == want and 0 < want <= 40 and p.answers == [str(want)]
    prompts = task_prompts("arithmetic-easy", 5, split="test")
    assert [pr["verifier"]["answer"] for pr in prompts] == [p.target for p in test[:5]]
    # the standard level is unchanged by the new option
    assert arithmetic_problems(5, seed=3) == arithmetic_problems(5, seed=3, level="standard")
