"""CLI: bad input is named before any model loads; compare prints a table and writes a PNG."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from inproc import llmlab

from llmlab.eval.report import make_report, write_report
from llmlab.eval.tasks import parse_task
from llmlab.tasks.arithmetic import arithmetic_problems

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    return llmlab(*args)


def test_unknown_task_lists_valid_ones() -> None:
    r = cli("eval", "--task", "mmlu")
    assert r.returncode == 2
    assert "unknown task 'mmlu'" in r.stderr and "humaneval" in r.stderr and "rag:" in r.stderr
    assert "gen:<pydocs|file.jsonl>" in r.stderr


def test_empty_task_set_and_malformed_tasks() -> None:
    r = cli("eval")
    assert r.returncode == 2 and "no tasks given" in r.stderr
    with pytest.raises(ValueError, match="rag:<store>:<qrels>"):
        parse_task("rag:only-store")
    with pytest.raises(ValueError, match="perplexity:<corpus|file>"):
        parse_task("perplexity")
    assert parse_task("perplexity:C:/x.txt") == ("perplexity", ["C:/x.txt"])
    assert parse_task("humaneval:completion") == ("humaneval", ["completion"])
    with pytest.raises(ValueError, match=r"humaneval\[:chat\|completion\]"):
        parse_task("humaneval:instruct")
    with pytest.raises(ValueError, match="gen:<pydocs|file.jsonl>"):
        parse_task("gen")
    r = cli("eval", "--task", "")
    assert r.returncode == 2 and "unknown task ''" in r.stderr


def test_arithmetic_is_deterministic_and_held_out() -> None:
    a, b = arithmetic_problems(50, seed=3), arithmetic_problems(50, seed=3)
    assert [p.question for p in a] == [p.question for p in b]
    train = {p.question for p in arithmetic_problems(300, split="train", seed=3)}
    assert not train & {p.question for p in a}
    for p in a:  # every answer is a whole number and is what the text asks for
        assert p.target is not None and p.target == int(p.target)


def _report(path: Path, model: str, acc: float) -> Path:
    results = [{"task": "trivia", "config": {}, "metrics": {"accuracy": acc, "n": 10},
                "samples": []},
               {"task": "perplexity:kjv", "config": {}, "metrics": {"bits_per_byte": 1.1}}]
    return write_report(make_report(model, None, 0, results, {"limit": 10}), path)


def test_report_fields_and_compare_png(tmp_path: Path) -> None:
    a = _report(tmp_path / "a.json", "m1", 0.25)
    b = _report(tmp_path / "b.json", "m2", 0.5)
    rep = json.loads(a.read_text())
    for key in ("model", "adapter", "tasks", "config", "seed", "date", "llmlab_version"):
        assert key in rep
    png = tmp_path / "cmp.png"
    r = cli("eval", "compare", str(a), str(b), "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert "trivia / accuracy" in r.stdout and "0.25" in r.stdout and "0.5" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_rejects_non_reports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = cli("eval", "compare", str(bad), str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "not an llmlab eval report" in r.stderr
