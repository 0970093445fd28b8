"""The pretraining page in Chromium: a micro run started from the page draws the run's own
loss records (compared with its metrics.jsonl on disk) falling; stopped, it is listed and
is a model the Self-attention page loads (its layer count read back from its config.json)."""

from __future__ import annotations

import json
import time

import httpx

from .browser import set_range, shot

POINTS = "JSON.parse(document.querySelector('[data-testid=pt-loss]').dataset.train || '[]')"


def test_pretrain_from_the_page(page, server) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/#/pretrain")
    pg.wait_for_function("document.querySelector('[data-testid=pt-shape]').dataset.params")
    set_range(pg, "pt-depth", 2)
    set_range(pg, "pt-vocab", 1)  # a 512-id BPE
    set_range(pg, "pt-steps", 3000)
    set_range(pg, "pt-every", 20)
    # The shape shown is the library's plan for depth 2, parameters included.
    plan = httpx.get(f"{server.url}/api/pretrain/shape",
                     params={"depth": 2, "tokenizer": "bpe:512", "steps": 3000}).json()
    pg.wait_for_function(f"document.querySelector('[data-testid=pt-shape]').dataset.params"
                         f" === '{plan['n_params']}'")
    assert "2 layers × 64 wide" in pg.inner_text("[data-testid=pt-shape]")

    t0 = time.perf_counter()
    pg.click("[data-testid=pt-start]")
    pg.wait_for_function(f"{POINTS}.length >= 1", timeout=120_000)
    first_point_s = time.perf_counter() - t0
    print(f"start click -> first loss point on the page: {first_point_s:.1f} s")
    pg.wait_for_function(f"{POINTS}.some(p => p[0] >= 40)", timeout=240_000)
    pg.wait_for_selector("[data-testid=pt-samples] .sample[data-step='20']")
    running = httpx.get(f"{server.url}/api/runs").json()["running"]
    assert len(running) == 1
    run_id = running[0]
    run_dir = server.hub.runs().run_dir(run_id)
    shown = pg.evaluate(POINTS)
    disk = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert shown == [[r["step"], r["loss"]] for r in disk[:len(shown)]]
    assert shown[-1][1] < shown[0][1]
    samples = pg.eval_on_selector_all("[data-testid=pt-samples] .sample pre",
                                      "ps => ps.map(p => p.textContent)")
    on_disk = [json.loads(ln)["text"] for ln in
               (run_dir / "samples.jsonl").read_text().splitlines()]
    assert samples == on_disk[:len(samples)] and len(samples) >= 2

    pg.click("[data-testid=pt-stop]")
    pg.wait_for_selector("[data-testid=pt-status][data-status=stopped]", timeout=120_000)
    pg.wait_for_selector("[data-testid=pt-model-hint]:not([hidden])")
    assert f"run:{run_id}" in pg.inner_text("[data-testid=pt-model-hint]")
    assert pg.eval_on_selector_all("[data-testid=pt-list] option",
                                   "os => os.map(o => o.value)").count(run_id) == 1
    shot(pg, "pretrain")

    # The stopped run is a model of the Self-attention page's picker.
    pg.click("[data-testid=pt-attention-link]")
    pg.wait_for_selector(f"[data-testid=att-model] option[value='run:{run_id}']",
                         state="attached")
    pg.select_option("[data-testid=att-model]", f"run:{run_id}")
    pg.wait_for_function(f"document.querySelector('[data-stat=model]')?.textContent"
                         f".includes('{run_id}')", timeout=60_000)
    n_layer = json.loads((run_dir / "config.json").read_text())["model"]["n_layer"]
    assert pg.inner_text("[data-stat=layers]") == str(n_layer) == "2"


def test_uploaded_corpus_limits_and_errors(page, server) -> None:  # noqa: ANN001
    import hashlib

    from llmlab.data.corpora import kjv_text

    pg = page
    pg.goto(f"{server.url}/#/pretrain")
    pg.select_option("[data-testid=pt-corpus]", "upload")
    pg.wait_for_function("document.querySelector('[data-testid=pt-limits]').textContent")
    limit = server.hub.cfg.max_corpus_chars
    assert f"{limit:,} characters" in pg.inner_text("[data-testid=pt-limits]")
    pg.fill("[data-testid=pt-text]", "too short")
    pg.click("[data-testid=pt-upload]")
    pg.wait_for_selector("[data-testid=pt-upload-error]:not([hidden])")
    from llmlab.server.routes_runs import MIN_CORPUS_CHARS

    assert f"at least {MIN_CORPUS_CHARS:,}" in pg.inner_text("[data-testid=pt-upload-error]")
    text = kjv_text()[:MIN_CORPUS_CHARS + 500]
    pg.fill("[data-testid=pt-text]", text)
    pg.click("[data-testid=pt-upload]")
    pg.wait_for_function("document.querySelector('[data-testid=pt-upload-state]')"
                         ".textContent.startsWith('stored')")
    name = "upload:" + hashlib.sha256(text.encode()).hexdigest()[:16]
    assert name in pg.inner_text("[data-testid=pt-upload-state]")
    assert pg.is_hidden("[data-testid=pt-upload-error]")
