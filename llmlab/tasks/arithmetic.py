"""Offline evaluation data: generated arithmetic word problems and the held-out trivia
questions (HumanEval lives in llmlab/eval/humaneval.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from llmlab.data.splits import check_split, in_split
from llmlab.data.trivia import GENERAL_LISTS, trivia_items


@dataclass
class QA:
    question: str
    answers: list[str]  # accepted answers
    target: float | None = None  # numeric answer, for arithmetic


# ---- arithmetic ----------------------------------------------------------------------------
ARITH_TEST_FRACTION = 0.2  # share of generated problems held out for evaluation
_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jon", "Kemi",
          "Liam", "Mia", "Noah", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara"]
_ITEMS = ["apples", "books", "marbles", "stickers", "pencils", "cookies", "shells", "coins",
          "cards", "stamps"]


def _problem(rng: random.Random) -> tuple[str, int]:
    n, m = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    kind = rng.randrange(6)
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    if kind == 0:
        return f"{n} has {a} {item}. {m} gives {n} {b} more. How many {item} does {n} have now?", \
            a + b
    if kind == 1:
        a, b = max(a, b) + rng.randint(1, 50), min(a, b)
        return f"{n} had {a} {item} and gave {b} of them to {m}. How many {item} does {n} have " \
            "left?", a - b
    if kind == 2:
        a, b = rng.randint(2, 25), rng.randint(2, 30)
        return f"{n} buys {a} boxes with {b} {item} in each box. How many {item} is that in " \
            "total?", a * b
    if kind == 3:
        b = rng.randint(2, 12)
        q = rng.randint(2, 30)
        return f"{n} shares {b * q} {item} equally among {b} friends. How many {item} does each " \
            "friend get?", q
    if kind == 4:
        c = rng.randint(2, 9)
        return f"{n} has {a} {item}, buys {c} packs of {b} {item}, then loses {a // 2}. How many " \
            f"{item} does {n} have?", a + c * b - a // 2
    p = rng.randint(2, 20)
    return f"A shop sells {item} at {p} dollars each. {n} buys {a * 10} of them. How many " \
        "dollars does that cost?", p * a * 10


def _easy_problem(rng: random.Random) -> tuple[str, int]:
    """One-step addition of two numbers up to 20, or subtraction of one up to 20 from one up
    to 30: a level a 135M model solves sometimes (about a fifth, greedy), so RL groups of
    samples differ in reward."""
    n, m = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    if rng.random() < 0.5:
        return f"{n} has {a} {item}. {m} gives {n} {b} more. How many {item} does {n} have now?", \
            a + b
    a, b = max(a, b) + rng.randint(1, 10), min(a, b)
    return f"{n} had {a} {item} and gave {b} of them to {m}. How many {item} does {n} have " \
        "left?", a - b


ARITH_LEVELS = ("standard", "easy")


def arithmetic_problems(n: int, split: str = "test", seed: int = 0, level: str = "standard"
                        ) -> list[QA]:
    """`n` distinct word problems with known integer answers, from the given split. `level`
    "standard" mixes six kinds with two-digit operands; "easy" is one small step."""
    check_split(split)
    if n < 1:
        raise ValueError(f"need at least one arithmetic problem, got n={n}")
    if level not in ARITH_LEVELS:
        raise ValueError(f"arithmetic level must be one of {ARITH_LEVELS}, got {level!r}")
    rng = random.Random(f"arith-{seed}" if level == "standard" else f"arith-{level}-{seed}")
    make = _problem if level == "standard" else _easy_problem
    out: list[QA] = []
    seen: set[str] = set()
    for _ in range(200 * n):
        q, ans = make(rng)
        if q in seen or not in_split(q, split, ARITH_TEST_FRACTION):
            continue
        seen.add(q)
        out.append(QA(q, [str(ans)], float(ans)))
        if len(out) == n:
            return out
    raise RuntimeError(f"could not generate {n} distinct {split} problems")


# ---- trivia --------------------------------------------------------------------------------
TRIVIA_LISTS = GENERAL_LISTS


def trivia_questions(split: str = "test", lists: tuple[str, ...] = TRIVIA_LISTS) -> list[QA]:
    """Questions of one side of the shared trivia split (llmlab/data/trivia.py) that SFT and
    RL prompts also use: "test" never contains a question those trained on."""
    return [QA(it["question"], it["answers"]) for it in trivia_items(split, lists)]


def sample(items: list[Any], limit: int | None, seed: int) -> list[Any]:
    """A seeded shuffle then the first `limit`, so --limit draws from every list."""
    items = list(items)
    random.Random(seed).shuffle(items)
    return items if limit is None else items[:limit]
