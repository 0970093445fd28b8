"""The evaluation page in a real browser: SmolLM2 against a tiny LoRA adapter trained in the
lab, on a few arithmetic and HumanEval problems. The page's numbers must be those of the
`llmlab eval` runs behind it; a HumanEval failure drills down to the sandbox's
own output (the program run again in the sandbox gives the same). Screenshots in
tests/artifacts/."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest

from .browser import shot
from .lab_helpers import finish
from .pipeline_runs import pretrained

BASE = "smollm2-135m-instruct"
LIMIT, MAX_NEW = 2, 48


@pytest.fixture(scope="module")
def adapter_run(server: Any) -> dict:
    """A 2-step SFT LoRA on trivia: a second model that differs a little from its base."""
    return finish(server.url, "sft", {"data": "trivia", "peft": "lora", "lora_r": 4,
                                         "lora_alpha": 8, "max_steps": 2, "batch_size": 2,
                                         "lr": 5e-3, "eval_every": 0, "ckpt_every": 0})


def _page_numbers(pg: Any) -> dict[tuple[str, str], float]:  # noqa: ANN401
    rows = pg.eval_on_selector_all(
        "[data-testid=eval-number]",
        "es => es.map(e => [e.dataset.run, e.dataset.task, e.dataset.value])")
    return {(run, task): float(v) for run, task, v in rows}


def test_eval_page_compares_two_models_and_drills_into_a_humaneval_failure(
        page: Any, server: Any, adapter_run: dict) -> None:
    from llmlab.tasks.humaneval import HUMANEVAL, failing_line, program
    from llmlab.tasks.sandbox import Limits, run_code

    pg = page
    model = adapter_run["model"]
    # The link other pages use: it preselects the run; SmolLM2 is ticked beside it.
    pg.goto(f"{server.url}/#/eval?model={model}")
    pg.wait_for_selector(f"[data-testid=eval-model][value='{model}']:checked")
    pg.check(f"[data-testid=eval-model][value='{BASE}']")
    for t in ("arithmetic", "humaneval"):
        pg.check(f"[data-testid=eval-task][value='{t}']")
    pg.fill("[data-testid=eval-limit]", str(LIMIT))
    pg.fill("[data-testid=eval-max-tokens]", str(MAX_NEW))
    pg.click("[data-testid=eval-start]")
    # One eval run per model, one after the other; both end up compared in the chart.
    pg.wait_for_function(
        "() => document.querySelectorAll('[data-testid=eval-bar]').length === 4",
        timeout=900_000)
    assert pg.is_hidden("[data-testid=eval-error]")
    legend = pg.eval_on_selector_all("[data-testid=eval-legend]",
                                     "es => es.map(e => e.textContent)")
    assert len(legend) == 2 and any(BASE in x for x in legend) and any(model in x for x in legend)
    axis = pg.text_content("[data-testid=eval-chart]") or ""
    assert "metric value" in axis and "accuracy" in axis and "pass@1" in axis
    shot(pg, "eval-compare")

    # The page's numbers are the CLI's: each eval run is `llmlab eval --out RUN_DIR` in a
    # worker (SmolLM2, and the run's adapter on its base), whose report.json the page draws.
    runs = {r["options"]["model"]: r for r in
            httpx.get(f"{server.url}/api/runs", timeout=30).json()["runs"] if r["kind"] == "eval"}
    got = _page_numbers(pg)
    for name in (BASE, model):
        run_dir = server.hub.runs().run_dir(runs[name]["id"])
        assert "--out" in runs[name]["argv"] and runs[name]["argv"][0] == "eval"
        rep = json.loads((run_dir / "report.json").read_text())
        want = {r["task"]: r for r in rep["results"]}
        run_id = runs[name]["id"]
        assert got[(run_id, "arithmetic")] == want["arithmetic"]["metrics"]["accuracy"]
        assert got[(run_id, "humaneval")] == want["humaneval"]["metrics"]["pass@1"]
        page_rep = httpx.get(f"{server.url}/api/eval/report/{run_id}", timeout=30).json()
        assert [r["metrics"] for r in page_rep["results"]] == [r["metrics"] for r in rep["results"]]
        assert [r["ci95"] for r in page_rep["results"]] == [r["ci95"] for r in rep["results"]]
        # pass@1 by its closed form over the per-problem counts shown in the drill-down.
        items = httpx.get(f"{server.url}/api/eval/report/{run_id}/examples",
                          params={"task": "humaneval"}, timeout=30).json()["samples"]
        assert [s["output"] for s in items] == [s["output"] for s in want["humaneval"]["samples"]]
        closed = sum(1 - math.comb(1 - (s["status"] == "passed"), 1) / math.comb(1, 1)
                     for s in items) / len(items)
        assert got[(run_id, "humaneval")] == pytest.approx(closed)

    # Drill down: a HumanEval bar of SmolLM2 lists its items; a failure shows the sandbox's
    # stdout/stderr and the failing line, which running the program again reproduces.
    base_id = runs[BASE]["id"]
    pg.click(f"[data-testid=eval-bar-hit][data-run='{base_id}'][data-task='humaneval']")
    pg.wait_for_selector("[data-testid=eval-example]")
    items = httpx.get(f"{server.url}/api/eval/report/{base_id}/examples",
                      params={"task": "humaneval"}, timeout=30).json()["samples"]
    verdicts = pg.eval_on_selector_all("[data-testid=eval-example]",
                                       "es => es.map(e => e.dataset.verdict)")
    assert verdicts == [s["status"] for s in items]
    i = next((k for k, s in enumerate(items) if s["status"] != "passed"), None)
    assert i is not None, "SmolLM2 passed every problem at this limit: no failure to drill into"
    ex = pg.locator("[data-testid=eval-example]").nth(i)
    ex.evaluate("e => e.open = true")
    stderr = ex.locator("[data-testid=eval-stderr]").text_content()
    assert stderr == (items[i]["stderr"] or "(empty)") and "Traceback" in stderr
    assert ex.locator("[data-testid=eval-prompt]").text_content() == items[i]["prompt"]
    assert ex.locator("[data-testid=eval-output]").text_content() == items[i]["output"]
    prob = HUMANEVAL.examples("test", LIMIT)[i]
    src = program(prob, items[i]["solution"])
    again = run_code(src, Limits(timeout=5.0))
    assert again.status == items[i]["status"] and again.stderr[-2000:] == items[i]["stderr"]
    if items[i]["failing_line"]:
        assert ex.locator("[data-testid=eval-failing]").text_content() == \
            failing_line(src, again.stderr)
    shot(pg, "eval-drilldown")


def test_eval_page_judges_two_models_through_this_server(page: Any, server: Any) -> None:
    """LLM-as-judge from the page: a tiny pretraining run against its own first checkpoint,
    judged by the server's SmolLM2 through its /v1/chat/completions. The bar is the report's
    win rate; the drill-down shows each prompt's two answers and both of the judge's replies."""
    pre = pretrained(server.url)
    a, b = f"run:{pre['id']}", f"run:{pre['id']}@1"
    pg = page
    pg.goto(f"{server.url}/#/pipeline")  # a fresh page load lists the new run
    pg.goto(f"{server.url}/#/eval")
    pg.wait_for_selector(f"[data-testid=judge-b] option[value='{b}']", state="attached")
    pg.select_option("[data-testid=judge-a]", a)
    pg.select_option("[data-testid=judge-b]", b)
    pg.select_option("[data-testid=judge-model]", BASE)
    pg.fill("[data-testid=judge-limit]", "2")
    pg.fill("[data-testid=eval-max-tokens]", "12")
    pg.click("[data-testid=judge-start]")
    pg.wait_for_selector("[data-testid=eval-bar][data-task=judge]", timeout=300_000)
    assert pg.is_hidden("[data-testid=eval-error]")
    run = next(r for r in httpx.get(f"{server.url}/api/runs", timeout=30).json()["runs"]
               if r["kind"] == "judge" and r["options"].get("model_b") == b)
    rep = json.loads((server.hub.runs().run_dir(run["id"]) / "report.json").read_text())
    (res,) = rep["results"]
    assert _page_numbers(pg)[(run["id"], "judge")] == res["metrics"]["win_rate"]
    pg.click(f"[data-testid=eval-bar-hit][data-run='{run['id']}'][data-task='judge']")
    pg.wait_for_selector("[data-testid=judge-tally]")
    verdicts = pg.eval_on_selector_all("[data-testid=eval-example]",
                                       "es => es.map(e => e.dataset.verdict)")
    assert verdicts == [s["verdict"] for s in res["samples"]]
    ex = pg.locator("[data-testid=eval-example]").nth(0)
    ex.evaluate("e => e.open = true")
    first = res["samples"][0]
    assert ex.locator("[data-testid=judge-reply-1]").text_content() == first["replies"][0]
    assert ex.locator("[data-testid=judge-reply-2]").text_content() == first["replies"][1]
    assert ex.locator("[data-testid=judge-answer-b]").text_content() == first["answer_b"]
    shot(pg, "eval-judge")
