"""Verifiable rewards: a completion and a verifier spec (a JSON object) -> a float in [0, 1].

Specs (the "verifier" field of RL prompt JSONL):
    {"type": "numeric", "answer": 42, "tol": 1e-6}     final number stated == answer
    {"type": "trivia", "answers": ["Paris"]}           normalised (SQuAD) answer match
    {"type": "code", "tests": "...", "prefix": "...", "entry_point": "f", "timeout": 5}
        prefix + completion + tests (+ check(entry_point)) runs in the sandbox and exits 0
    {"type": "format", "pattern": "regex"}             the completion matches the regex
    {"type": "sum", "parts": [spec, ...], "weights": [w, ...]}   weighted sum of parts
Matching reuses llmlab.tasks.metrics; code runs only in llmlab.tasks.sandbox (no network,
CPU/memory/wall limits), so hostile completions fail rather than harm. A Task's reward() is
its verifier's score.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import Any

from llmlab.tasks.metrics import answer_match, number_match
from llmlab.tasks.sandbox import Limits, run_many

TYPES = ("numeric", "trivia", "code", "format", "sum")
_REQUIRED = {"numeric": ("answer",), "trivia": ("answers",), "code": ("tests",),
             "format": ("pattern",), "sum": ("parts",)}


def check_verifier(spec: Any, where: str = "verifier") -> None:
    """Raise ValueError naming `where` and the field when a spec is malformed."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: verifier must be an object, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise ValueError(f"{where}: verifier.type must be one of {TYPES}, got {kind!r}")
    for f in _REQUIRED[kind]:
        if f not in spec:
            raise ValueError(f"{where}: verifier of type {kind!r} needs field {f!r}")
    if kind == "numeric" and not isinstance(spec["answer"], (int, float)):
        raise ValueError(f"{where}: verifier.answer must be a number, got {spec['answer']!r}")
    if kind == "trivia" and (not isinstance(spec["answers"], list) or not spec["answers"]
                             or not all(isinstance(a, str) for a in spec["answers"])):
        raise ValueError(f"{where}: verifier.answers must be a non-empty list of strings")
    if kind == "code" and not isinstance(spec["tests"], str):
        raise ValueError(f"{where}: verifier.tests must be a string")
    if kind == "format":
        try:
            re.compile(spec["pattern"])
        except (re.error, TypeError) as e:
            raise ValueError(f"{where}: verifier.pattern is not a regex: {e}") from None
    if kind == "sum":
        parts = spec["parts"]
        if not isinstance(parts, list) or not parts:
            raise ValueError(f"{where}: verifier.parts must be a non-empty list")
        w = spec.get("weights", [1.0] * len(parts))
        if not isinstance(w, list) or len(w) != len(parts):
            raise ValueError(f"{where}: verifier.weights must be a list as long as parts")
        for i, p in enumerate(parts):
            check_verifier(p, f"{where}: parts[{i}]")


def code_program(spec: dict[str, Any], completion: str, nonce: str = "") -> str:
    """prefix + completion + tests; the program prints `nonce` last, so a completion that
    exits early with status 0 (sys.exit(0), os._exit(0)) skips the tests and does not pass."""
    prog = spec.get("prefix", "") + completion + "\n\n" + spec["tests"] + "\n"
    if spec.get("entry_point"):
        prog += f"\ncheck({spec['entry_point']})\n"
    return prog + f"\nprint({nonce!r})\n" if nonce else prog


def _flatten(spec: dict[str, Any], w: float, out: list[tuple[float, dict[str, Any]]]) -> None:
    if spec["type"] == "sum":
        ws = spec.get("weights", [1.0] * len(spec["parts"]))
        for p, pw in zip(spec["parts"], ws, strict=True):
            _flatten(p, w * float(pw), out)
    else:
        out.append((w, spec))


def _simple(completion: str, spec: dict[str, Any]) -> float:
    kind = spec["type"]
    if kind == "numeric":
        return float(number_match(completion, float(spec["answer"]), spec.get("tol", 1e-6)))
    if kind == "trivia":
        return float(answer_match(completion, spec["answers"]))
    if kind == "format":
        return float(re.search(spec["pattern"], completion, re.DOTALL) is not None)
    raise AssertionError(kind)


def score_details(completions: Sequence[str], specs: Sequence[dict[str, Any]],
                  workers: int = 2) -> list[dict[str, Any]]:
    """Per completion {"reward", "checks"}: each check is a simple spec's {"type", "weight",
    "score"}, and for code the sandbox's own verdict ("status": passed | failed | timeout,
    its stdout/stderr tails and seconds). Code runs in the sandbox, `workers` at a time."""
    if len(completions) != len(specs):
        raise ValueError(f"{len(completions)} completions but {len(specs)} verifiers")
    out: list[dict[str, Any]] = [{"reward": 0.0, "checks": []} for _ in completions]
    nonce = "tests-done-" + secrets.token_hex(8)
    jobs: list[tuple[dict[str, Any], str, float]] = []  # (check, program, timeout)
    for row, c, s in zip(out, completions, specs, strict=True):
        parts: list[tuple[float, dict[str, Any]]] = []
        _flatten(s, 1.0, parts)
        for w, p in parts:
            check = {"type": p["type"], "weight": w, "score": 0.0}
            row["checks"].append(check)
            if p["type"] == "code":
                jobs.append((check, code_program(p, c, nonce), float(p.get("timeout", 5.0))))
            else:
                check["score"] = _simple(c, p)
    for timeout in sorted({j[2] for j in jobs}):
        batch = [j for j in jobs if j[2] == timeout]
        results = run_many([j[1] for j in batch], Limits(timeout=timeout), workers=workers)
        for (check, _, _), r in zip(batch, results, strict=True):
            # passing means the tests ran to the end (the nonce), not an early exit(0)
            ok = r.passed and r.stdout.rstrip().endswith(nonce)
            check.update(score=float(ok), status=r.status if ok or not r.passed else "failed",
                         stdout=r.stdout.replace(nonce, "")[-2000:], stderr=r.stderr[-2000:],
                         seconds=r.seconds)
    for row in out:
        row["reward"] = sum(ch["weight"] * ch["score"] for ch in row["checks"])
    return out


def score_many(completions: Sequence[str], specs: Sequence[dict[str, Any]],
               workers: int = 2) -> list[float]:
    """Rewards for aligned lists; code checks run in the sandbox, `workers` at a time."""
    return [d["reward"] for d in score_details(completions, specs, workers)]


def score(completion: str, spec: dict[str, Any]) -> float:
    return score_many([completion], [spec])[0]
