"""The preferences page in a real browser (Debian's chromium driven by Playwright): the
sampled answers and the pair each pairing mode forms, a pair scored by a reward model, and
a 2-step reward run started from the page whose metric points appear. Screenshots land in
tests/artifacts/ (or $LLMLAB_ARTIFACTS)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from .browser import shot

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def stats(pg: Any, testid: str) -> dict[str, str]:
    return pg.eval_on_selector_all(
        f"[data-testid={testid}] [data-stat]",
        "es => Object.fromEntries(es.map(e => [e.dataset.stat, e.textContent]))")


def test_prefs_page_pairs_modes_and_a_live_reward_run(page: Any, server: Any) -> None:
    pg = page
    pg.goto(f"{server.url}/#/prefs")
    # On load the page samples prompt #2 of arithmetic-easy-prefs, k 4, hint on, seed 0:
    # the same request gives the same samples (seeded), so the API's answer is the reference
    # (itself equal to make_prefs' pairs: test_prefs_api.py).
    pg.wait_for_selector("[data-testid=prefs-card-3]", timeout=300_000)
    api = httpx.post(f"{server.url}/api/prefs/sample", json={
        "task": "arithmetic-easy-prefs", "index": 2, "samples": 4, "temperature": 0.7,
        "seed": 0, "hint": True}, timeout=300).json()
    assert pg.inner_text("[data-testid=prefs-prompt]") == api["prompt"]
    assert pg.eval_on_selector_all("[data-testid=prefs-samples] .pf-text",
                                   "es => es.map(e => e.textContent)") == \
        [s["text"] for s in api["samples"]]
    for mode, m in api["pairings"].items():
        pg.click(f"[data-testid=prefs-mode-{mode}]")
        roles = pg.eval_on_selector_all("[data-testid=prefs-samples] .pf-sample",
                                        "es => es.map(e => e.dataset.role)")
        if m["pair"] is None:
            assert pg.is_visible("[data-testid=prefs-nopair]") and set(roles) == {""}
            continue
        assert roles[m["chosen"]] == "chosen"
        if m["rejected"] is not None:
            assert roles[m["rejected"]] == "rejected"
        else:  # perturbed: the rejected text is the chosen one with its answer changed
            assert pg.inner_text("[data-testid=prefs-perturbed]") == m["pair"]["rejected"]
        assert pg.inner_text("[data-testid=prefs-lendiff]") == f"{m['length_diff']} chars"
        shot(pg, f"prefs-mode-{mode}")
    pg.click("[data-testid=prefs-mode-extremes]")
    pg.click("[data-testid=prefs-use]")
    pair = api["pairings"]["extremes"]["pair"]
    assert pg.input_value("[data-testid=prefs-p-chosen]") == pair["chosen"]
    assert pg.input_value("[data-testid=prefs-p-rejected]") == pair["rejected"]
    info = httpx.get(f"{server.url}/api/prefs/info", timeout=30).json()
    if not info["reward_models"]:
        assert "No reward model yet" in pg.inner_text("[data-testid=prefs-rm-note]")

    # A 2-step reward run from the page: 16 prompts sampled into pairs, a quarter held out.
    for testid, v in (("prompts", "16"), ("val", "4"), ("steps", "2"), ("batch", "2"),
                      ("every", "1")):
        pg.fill(f"[data-testid=prefs-run-{testid}]", v)
    pg.select_option("[data-testid=prefs-run-pairing]", "extremes")
    pg.click("[data-testid=prefs-run-start]")
    pg.wait_for_selector("[data-testid=prefs-run-status][data-status=running]")
    shot(pg, "prefs-run-sampling")
    pg.wait_for_selector("[data-testid=prefs-run-status][data-status=finished]",
                         timeout=600_000)
    pg.wait_for_selector("[data-testid=prefs-live-stats][data-n='2']")
    run = next(r for r in httpx.get(f"{server.url}/api/runs", timeout=30).json()["runs"]
               if r["kind"] == "reward" and r["options"].get("task") == "arithmetic-easy-prefs")
    root = Path(server.hub.runs().run_dir(run["id"]))
    rows = [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    st = stats(pg, "prefs-live-stats")
    assert st["acc"] == f"{rows[-1]['val/pairwise_accuracy']:.3f}"
    assert st["baseline"] == f"{rows[-1]['val/length_baseline']:.3f}"
    assert st["margin"] == f"{rows[-1]['val/margin']:.4f}"
    for chart in ("loss", "acc", "margin"):
        assert pg.eval_on_selector_all(f"[data-testid=prefs-chart-{chart}] path.fline",
                                       "es => es.filter(e => e.getAttribute('d')).length") >= 2
    assert "BENCHMARKS.md" in pg.inner_text("[data-testid=prefs-finding]")
    shot(pg, "prefs-live")

    # The finished run is now a reward model the pair can be scored with: the page shows
    # the API's numbers (equal to transformers' in test_prefs_api.py).
    model = f"run:{run['id']}"
    pg.wait_for_selector(f"[data-testid=prefs-rm] option[value='{model}']", state="attached")
    pg.select_option("[data-testid=prefs-rm]", model)
    pg.click("[data-testid=prefs-score]")
    pg.wait_for_selector("[data-testid=prefs-scores] [data-stat=p]")
    want = httpx.post(f"{server.url}/api/prefs/score", json={
        "model": model, "prompt": pair["prompt"], "chosen": pair["chosen"],
        "rejected": pair["rejected"]}, timeout=120).json()
    got = stats(pg, "prefs-scores")
    assert got["rc"] == f"{want['r_chosen']:.4f}" and got["rr"] == f"{want['r_rejected']:.4f}"
    assert got["p"] == f"{want['p_chosen']:.4f}"
    shot(pg, "prefs-score")
