"""What the evaluation page shows, in the library: `llmlab eval --out DIR` (report, progress,
every item), pass@k against its closed form, intervals against their definitions and scipy,
the failing line against the sandbox's traceback, and the lab's limits on an eval run's
options."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from .helpers import cli


def test_eval_out_dir_writes_report_progress_and_every_item(tiny_dir: Path, tmp_path: Path
                                                            ) -> None:
    from llmlab.tasks.humaneval import HUMANEVAL, failing_line, program
    from llmlab.tasks.sandbox import Limits, run_code

    out = tmp_path / "run"
    out.mkdir()
    r = cli("eval", "--model", str(tiny_dir), "--task", "humaneval:completion", "--samples", "3",
            "--limit", "2", "--max-new-tokens", "12", "--keep-examples", "0", "--no-progress",
            "--out", str(out))
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    progress = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(p["event"], p["step"], p["of"]) for p in progress] == [("start", 0, 1),
                                                                    ("done", 1, 1)]
    (res,) = rep["results"]
    assert progress[1]["metrics"] == res["metrics"] and progress[1]["ci95"] == res["ci95"]
    items = res["samples"]
    assert len(items) == 6  # 2 problems x 3 samples, all kept
    # pass@k by the closed form 1 - C(n-c, k) / C(n, k), averaged over problems.
    for k in (1,):
        want = np.mean([1 - math.comb(3 - c, k) / math.comb(3, k) for c in
                        (sum(s["status"] == "passed" for s in items[i * 3:(i + 1) * 3])
                         for i in range(2))])
        assert res["metrics"][f"pass@{k}"] == pytest.approx(want, abs=1e-12)
    # Each item's verdict and output are the sandbox's own, run again here.
    probs = HUMANEVAL.examples("test", 2)
    for j, s in enumerate(items):
        src = program(probs[j // 3], s["solution"])
        again = run_code(src, Limits(timeout=5.0))
        assert (s["verdict"], s["stdout"], s["stderr"]) == (again.status, again.stdout[-2000:],
                                                            again.stderr[-2000:])
        assert s["failing_line"] == (None if again.passed else failing_line(src, again.stderr))
        assert s["prompt"] == probs[j // 3]["prompt"]
    assert res["ci95"]["pass@1"]["method"] == "bootstrap"


def test_failing_line_is_the_assert_the_traceback_ends_on() -> None:
    from llmlab.tasks.humaneval import failing_line
    from llmlab.tasks.sandbox import run_code

    src = "def f(x):\n    return x + 1\n\ndef check(c):\n    assert c(1) == 2\n    " \
          "assert c(2) == 4, 'two'\n\ncheck(f)\n"
    r = run_code(src)
    assert r.status == "failed" and "AssertionError: two" in r.stderr
    assert failing_line(src, r.stderr) == "assert c(2) == 4, 'two'"
    assert failing_line(src, "no traceback") is None


def test_intervals_follow_their_definitions() -> None:
    from scipy import stats

    from llmlab.eval.intervals import intervals
    from llmlab.tasks.metrics import pass_at_k

    # Accuracy: the Wilson score interval by its formula.
    items = [{"correct": c} for c in [True] * 7 + [False] * 13]
    ci = intervals("arithmetic", {"accuracy": 0.35}, items)["accuracy"]
    z, n, p = stats.norm.ppf(0.975), 20, 0.35
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (ci["low"], ci["high"]) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert ci["method"] == "wilson"

    # pass@2 over 4 samples a problem: a bootstrap over problems, close to scipy's percentile
    # bootstrap of the same per-problem pass@2 values.
    rng = np.random.default_rng(3)
    passed = rng.integers(0, 5, 30)
    he = [{"task_id": f"t{i}", "status": "passed" if j < c else "failed"}
          for i, c in enumerate(passed) for j in range(4)]
    per = np.array([pass_at_k(4, int(c), 2) for c in passed])
    got = intervals("humaneval", {"pass@1": 0.0, "pass@2": float(per.mean())}, he)["pass@2"]
    ref = stats.bootstrap((per,), np.mean, method="percentile", n_resamples=20000,
                          random_state=0).confidence_interval
    assert got["low"] == pytest.approx(ref.low, abs=0.03)
    assert got["high"] == pytest.approx(ref.high, abs=0.03)
    assert got["low"] < per.mean() < got["high"]
    assert intervals("perplexity:kjv", {"bits_per_byte": 1.0}, []) == {}


def test_an_eval_runs_options_are_limited_and_resolved(tmp_path: Path) -> None:
    from llmlab.lab import options as opts

    corpora = tmp_path / "_corpora"
    corpora.mkdir()
    (corpora / "abc.txt").write_text("some text")
    adapter_run = tmp_path / "sft-1"
    (adapter_run / "final").mkdir(parents=True)
    (adapter_run / "config.json").write_text(json.dumps(
        {"sft": {"peft": "lora", "model": "smollm2-135m-instruct"}}))
    runs = {"sft-1": adapter_run}
    ok = {"model": "run:sft-1", "task": "arithmetic, humaneval,perplexity:upload:abc,gen:pydocs"}
    opts.check_paths("eval", ok, runs, corpora)
    for bad, why in (({"task": "perplexity:/etc/passwd"}, "options.task"),
                     ({"task": "arithmetic,gen:/tmp/x.jsonl"}, "options.task"),
                     ({"task": "perplexity:upload:nope"}, "no uploaded corpus"),
                     ({"model": "/tmp/model"}, "options.model"),
                     ({"model": "run:nope"}, "no playground run")):
        with pytest.raises(ValueError, match=why):
            opts.check_paths("eval", bad, runs, corpora)
    got = opts.resolve(ok, runs, corpora, "eval")
    assert got["model"] == "smollm2-135m-instruct"  # an adapter run: its base with its adapter
    assert got["adapter"] == str(adapter_run / "final")
    assert f"perplexity:{corpora / 'abc.txt'}" in got["task"].split(",")
    with pytest.raises(ValueError, match="--limit must be >= 1"):
        opts.validate("eval", ["--task=arithmetic", "--limit=0"], tmp_path / "x")
    with pytest.raises(ValueError, match="unknown task"):
        opts.validate("eval", ["--task=arithmetic,bogus"], tmp_path / "x")
