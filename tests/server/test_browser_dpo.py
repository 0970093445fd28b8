"""The DPO page in a real browser: a bundled pair's tokens coloured by the API's log π/π_ref,
β changing the loss display as the API computes it, and a 2-step DPO run started from the
page whose metric points (metrics.jsonl, held-out accuracy included) appear, then serves as
the policy. Screenshots land in tests/artifacts/ (or $LLMLAB_ARTIFACTS)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from .browser import set_range, shot

TOKS = "[data-testid=dpo-tokens-{}] [data-testid=dpo-tok]"


def shown(pg: Any, side: str) -> list[dict[str, str]]:
    return pg.eval_on_selector_all(TOKS.format(side), "es => es.map(e => ({t: e.textContent, "
                                   "lr: e.dataset.lr, bg: getComputedStyle(e).backgroundColor}))")


def stats(pg: Any, box: str) -> dict[str, float]:
    return {k: float(v) for k, v in pg.eval_on_selector_all(
        f"[data-testid={box}] [data-stat]",
        "es => es.map(e => [e.dataset.stat, e.dataset.value])")}


def wait_view(pg: Any, api: dict[str, Any]) -> None:
    """Until both sides show the API's tokens with the API's log-ratios."""
    want = {s: api[s]["logratio"] for s in ("chosen", "rejected")}
    pg.wait_for_function(
        """w => ['chosen', 'rejected'].every(s => JSON.stringify([...document.querySelectorAll(
             `[data-testid=dpo-tokens-${s}] [data-testid=dpo-tok]`)].map(e => Number(
             e.dataset.lr))) === JSON.stringify(w[s]))""", arg=want, timeout=120_000)


def check_pair(pg: Any, api: dict[str, Any]) -> None:
    wait_view(pg, api)
    for side in ("chosen", "rejected"):
        toks = shown(pg, side)
        assert [t["t"] for t in toks] == api[side]["pieces"]
        assert [float(t["lr"]) for t in toks] == pytest.approx(api[side]["logratio"], abs=0)
        sums = stats(pg, f"dpo-sums-{side}")
        assert sums["logratio"] == pytest.approx(api[side]["seq_logratio"], abs=0)
        assert sums["n"] == api[side]["n_tokens"]


def check_beta(pg: Any, url: str, api: dict[str, Any], pos: int) -> dict[str, float]:
    """Move the β slider; the loss panel shows what /api/dpo/loss gives at that β."""
    before = pg.get_attribute("[data-testid=dpo-losses]", "data-beta")
    set_range(pg, "dpo-beta", pos)
    pg.wait_for_function(
        "b => document.querySelector('[data-testid=dpo-losses]').dataset.beta !== b", arg=before)
    beta = float(pg.get_attribute("[data-testid=dpo-losses]", "data-beta"))
    c, r = api["chosen"], api["rejected"]
    want = httpx.post(f"{url}/api/dpo/loss", json={
        "logp_chosen": c["seq_logp"], "logp_rejected": r["seq_logp"],
        "ref_logp_chosen": c["seq_logp_ref"], "ref_logp_rejected": r["seq_logp_ref"],
        "len_chosen": c["n_tokens"], "len_rejected": r["n_tokens"], "beta": beta}).json()
    got = stats(pg, "dpo-losses")
    assert got["beta"] == beta == pytest.approx(10 ** (-2 + 3 * pos / 1000))
    for k in ("sigmoid", "ipo", "hinge"):
        assert got[f"loss-{k}"] == want["losses"][k]["loss"]
    assert got["reward-chosen"] == want["losses"]["sigmoid"]["rewards/chosen"]
    assert got["margin"] == want["losses"]["sigmoid"]["rewards/margin"]
    return got


def test_dpo_page_pair_beta_and_a_live_run(page, server) -> None:  # noqa: ANN001
    pg, url = page, server.url
    pg.goto(f"{url}/#/dpo")
    # The bundled pairs: SmolLM2 samples them the first time (then they are cached).
    pg.wait_for_function("() => Number(document.querySelector("
                         "'[data-testid=dpo-pair-pick]').dataset.n) > 0", timeout=600_000)
    pairs = httpx.get(f"{url}/api/dpo/pairs", timeout=600).json()["pairs"]
    p0 = {k: pairs[0][k] for k in ("prompt", "chosen", "rejected")}
    assert pg.input_value("[data-testid=dpo-prompt]") == p0["prompt"]
    assert pairs[0]["chosen_reward"] > pairs[0]["rejected_reward"]  # the verifier's ranking
    base = httpx.post(f"{url}/api/dpo/pair", json={**p0, "model": "smollm2", "beta": 0.1},
                      timeout=120).json()
    check_pair(pg, base)
    assert pg.is_visible("[data-testid=dpo-same]")  # π = π_ref: all ratios 0, said so
    got = check_beta(pg, url, base, 700)
    assert got["loss-ipo"] != base["losses"]["ipo"]["loss"]  # IPO's 1/(2β) moved
    shot(pg, "dpo-pair-untrained")

    # A 2-step DPO run from the page: metric points, held-out accuracy at steps 0 and 2.
    pg.fill("[data-testid=dpo-steps]", "2")
    pg.fill("[data-testid=dpo-eval-every]", "2")
    pg.fill("[data-testid=dpo-heldout]", "4")
    pg.click("[data-testid=dpo-run-start]")
    pg.wait_for_function("() => document.querySelector('[data-testid=dpo-run-status]')"
                         ".dataset.status === 'finished'", timeout=600_000)
    runs = [r for r in httpx.get(f"{url}/api/runs").json()["runs"] if r["kind"] == "dpo"]
    run = runs[0]
    path = server.hub.runs().run_dir(run["id"])
    recs = [json.loads(ln) for ln in (path / "metrics.jsonl").read_text().splitlines()]
    pg.wait_for_function("n => document.querySelector('[data-testid=dpo-points]').dataset.n"
                         " == n", arg=str(len(recs)))
    held = [r for r in recs if "heldout/accuracy" in r]
    assert [r["step"] for r in held] == [0, 2] and all(r["heldout/n"] == 4 for r in held)
    assert pg.get_attribute("[data-testid=dpo-points]", "data-heldout") == "2"
    assert {r["step"] for r in recs if "rewards/margin" in r} == {1, 2}
    assert pg.eval_on_selector_all("[data-testid=dpo-live-rewards] path.fline",
                                   "es => es.filter(e => e.getAttribute('d')).length") == 3
    text = pg.inner_text("[data-testid=dpo-points]")
    for r in held:
        assert f"step {r['step']}: {100 * r['heldout/accuracy']:.1f}%" in text
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["align"]["task"] == "arithmetic-easy-prefs" and cfg["train"]["max_steps"] == 2
    shot(pg, "dpo-live-run")

    # The trained run as the policy: its adapter against the base with it disabled.
    model = f"run:{run['id']}"
    pg.wait_for_selector(f"[data-testid=dpo-model] option[value='{model}']", state="attached")
    pg.select_option("[data-testid=dpo-model]", model)
    trained = httpx.post(f"{url}/api/dpo/pair", json={**p0, "model": model, "beta": 0.1},
                         timeout=300).json()
    assert not trained["same_model"]
    check_pair(pg, trained)
    assert not pg.is_visible("[data-testid=dpo-same]")
    for side in ("chosen", "rejected"):
        assert trained[side]["logp_ref"] == pytest.approx(base[side]["logp"], abs=1e-4)
        assert max(abs(x) for x in trained[side]["logratio"]) > 0
        assert len({t["bg"] for t in shown(pg, side)}) > 2  # coloured by the ratio
    got = check_beta(pg, url, trained, 300)
    assert got["loss-sigmoid"] != trained["losses"]["sigmoid"]["loss"]  # z ≠ 0 now
    shot(pg, "dpo-pair-trained")
