"""The pipeline page, the playground's landing page, in a real browser (Debian's chromium
driven by Playwright): every stage of llmlab.lab.lineage.STAGES is drawn as a box whose links
open its pages, and runs started through the API appear in their stage's box with the run
they were started from. Screenshots land in tests/artifacts/ (or $LLMLAB_ARTIFACTS)."""

from __future__ import annotations

from typing import Any

import httpx

from llmlab.lab import lineage

from .browser import shot
from .pipeline_runs import chain


def _hash(pg) -> str:  # noqa: ANN001
    return pg.evaluate("location.hash")


def test_landing_page_draws_every_stage_with_links_to_its_pages(page, server) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/")  # no hash: the landing page
    pg.wait_for_selector("[data-testid=pipeline] [data-testid=stage-eval]")
    nav = pg.eval_on_selector_all("#nav a", "as => as.map(a => [a.getAttribute('href'), "
                                  "a.className])")
    assert nav[0] == ["#/pipeline", "active"]
    routes = {href for href, _ in nav}
    for stage in lineage.STAGES:
        box = f"[data-testid=stage-{stage.id}]"
        assert pg.locator(box).count() == 1
        assert pg.text_content(f"[data-testid=stage-title-{stage.id}]") == stage.title
        hrefs = pg.eval_on_selector_all(f"{box} a[data-testid^=stage-link-]",
                                        "as => as.map(a => a.getAttribute('href'))")
        assert hrefs == [f"#/{p}" for p in stage.pages]
        # The box's title opens its first page: the route changes and, for a page this
        # build has, the page is drawn in place of the map.
        pg.click(f"[data-testid=stage-title-{stage.id}]")
        want = f"#/{stage.pages[0]}"
        pg.wait_for_function("h => location.hash === h", arg=want)
        if want in routes:
            pg.wait_for_selector(f"#nav a.active[href='{want}']")
            assert pg.locator("[data-testid=pipeline]").count() == 0
        pg.goto(f"{server.url}/#/pipeline")
        pg.wait_for_selector(f"[data-testid=pipeline] {box}")
    assert _hash(pg) == "#/pipeline"
    # A link inside a box opens that page too.
    pg.click("[data-testid=stage-link-sft-sftmask]")
    pg.wait_for_selector("#nav a.active[href='#/sftmask']")
    assert _hash(pg) == "#/sftmask"


def test_a_run_started_via_the_api_shows_in_its_stage_with_its_parent(page, server: Any) -> None:  # noqa: ANN001
    pre, sft = chain(server.url)
    pg = page
    pg.goto(f"{server.url}/#/pipeline")
    chip = f"[data-testid=stage-sft] [data-testid=run-{sft['id']}]"
    pg.wait_for_selector(chip)
    assert pg.locator(f"[data-testid=stage-pretrain] [data-testid=run-{pre['id']}]").count() == 1
    # Named by the parent the run manager recorded for it (lab.json: options.model).
    assert sft["options"]["model"] == f"run:{pre['id']}"
    assert pg.get_attribute(chip, "data-parents") == pre["id"]
    assert pg.get_attribute(chip, "data-status") == "finished"
    shown = pg.text_content(f"[data-testid=run-parent-{sft['id']}-0]")
    kind, _date, rest = pre["id"].split("-", 2)  # the chip drops the date; the tooltip has it
    assert shown == f"← model: {kind}-{rest}"
    assert f"model: run:{pre['id']}" in pg.text_content(f"{chip} title")
    assert pg.text_content(f"[data-testid=run-parent-{pre['id']}-0]") == "← from scratch"
    assert pg.locator(f"[data-testid=edge-{pre['id']}-{sft['id']}]").count() == 1
    # Where the learner is: both stages reached, the SFT the newest, the next step marked.
    for s in ("pretrain", "sft"):
        assert pg.get_attribute(f"[data-testid=stage-{s}]", "data-state") == "done"
    assert pg.get_attribute("[data-testid=stage-sft]", "data-current") == "1"
    nxt = pg.eval_on_selector_all("[data-next='1']", "gs => gs.map(g => g.dataset.testid)")
    # Other tests share this server: an evaluation finished there has taken the learner
    # through the whole pipeline, and then no step is marked next.
    want = httpx.get(f"{server.url}/api/pipeline", timeout=60).json()["next"]
    assert nxt == ([f"stage-{want}"] if want else [])
    if want:
        assert want not in ("pretrain", "sft")
        assert pg.text_content(f"[data-testid=stage-badge-{want}]") == "next"
    assert pg.eval_on_selector_all(".error:not([hidden])", "e => e.length") == 0
    shot(pg, "pipeline")
