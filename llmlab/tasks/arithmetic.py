"""Arithmetic word problems, generated offline with known integer answers, in two levels.

"standard" mixes six kinds of problem with two-digit operands (`--task arithmetic`);
"easy" is one small add or subtract step (`--task arithmetic-easy`, RL and preferences only).
A hash of the question text holds ARITH_TEST_FRACTION out for evaluation.
"""

from __future__ import annotations

import random
from typing import Any

from llmlab.data.splits import check_split, in_split
from llmlab.tasks.base import QA, EvalConfig, Generate, Task
from llmlab.tasks.metrics import final_number

ARITH_PROMPT = ("Solve this word problem. Think step by step, then finish with "
                "'The answer is N.'\n\n{q}")
# arithmetic-easy asks for one line of working: a short completion is cheap to sample on CPU
# and leaves no room to wander off before the answer.
ARITH_EASY_PROMPT = "{q}\nWrite the calculation on one line, then 'The answer is N.'"
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


class Arithmetic(Task):
    chat = True

    def __init__(self, level: str = "standard") -> None:
        if level not in ARITH_LEVELS:
            raise ValueError(f"arithmetic level must be one of {ARITH_LEVELS}, got {level!r}")
        self.level = level
        self.name = "arithmetic" if level == "standard" else f"arithmetic-{level}"
        self.prompt = ARITH_PROMPT if level == "standard" else ARITH_EASY_PROMPT

    def examples(self, split: str = "train", n: int | None = None, seed: int | None = 0
                 ) -> list[QA]:
        """The first `n` problems of the split; the seed picks the generator's stream, and a
        larger `n` only appends problems (so offset slices stay comparable)."""
        if n is None:
            raise ValueError("arithmetic problems are generated: give n")
        return arithmetic_problems(n, split=split, seed=seed or 0, level=self.level)

    def verifier(self, example: QA) -> dict[str, Any]:
        return {"type": "numeric", "answer": example.target}

    def evaluate(self, lm: Any, cfg: EvalConfig, generate: Generate) -> dict[str, Any]:
        """Greedy accuracy on the first `limit` (200) test problems: the final number stated
        (final_number) must equal the answer."""
        probs = self.examples("test", cfg.limit or 200, cfg.seed)
        outs = generate(lm, [self.format(p) for p in probs],
                        max_new_tokens=cfg.max_new_tokens or 160, seed=cfg.seed,
                        batch_size=cfg.batch_size, progress=cfg.progress, desc=self.name)
        got = [final_number(o) for o in outs]
        ok = [g is not None and abs(g - p.target) < 1e-6 for g, p in zip(got, probs, strict=True)]
        samples = [{"prompt": self.format(p), "question": p.question, "target": p.target,
                    "output": o, "parsed": g, "correct": c,
                    "verdict": "correct" if c else "no number" if g is None else "wrong"}
                   for p, o, g, c in zip(probs, outs, got, ok, strict=True)]
        return {"config": {"split": "test", "n": len(probs)},
                "metrics": {"accuracy": sum(ok) / len(ok), "n": len(ok),
                            "unparsed": sum(g is None for g in got)},
                "samples": samples}


ARITHMETIC = Arithmetic()
ARITHMETIC_EASY = Arithmetic("easy")
