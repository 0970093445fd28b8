"""The tour's one data file checked against what it points at: every route is a page that
web/src/main.ts routes, every highlighted or filled `data-testid` is one a page's source
creates, every step's words are served as narration, and a broken file is refused naming its
step and field. Static and fast: the browser walk is in test_browser_tour.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from llmlab.server import tour

WEB = Path(__file__).parents[2] / "web" / "src"


def test_steps_point_at_real_pages_and_elements() -> None:
    routed = set(re.findall(r'^\s*\["([a-z]+)", "', (WEB / "main.ts").read_text(), re.M))
    sources = "\n".join(p.read_text() for p in WEB.rglob("*.ts"))
    # el(..., {"data-testid": X}), d3's .attr("data-testid", X), heatmap(..., {testid: X})
    made = set(re.findall(r'(?:"data-testid"[,:]|testid:)\s*"([a-z0-9-]+)"', sources))
    assert {"tokenizer", "attention", "inside", "nexttoken", "rag"} <= routed
    for s in tour.steps():
        assert s["route"][2:].split("?")[0] in routed, s["id"]
        for sel in [s["target"], *s.get("fill", {})]:
            for tid in re.findall(r"data-testid=([a-z0-9-]+)", sel):
                assert tid in made, (s["id"], tid)


def test_each_step_is_narrated() -> None:
    from llmlab.server.app import create_app
    from llmlab.server.hub import ServerConfig

    with TestClient(create_app(ServerConfig(preload=False))) as c:
        got = c.get("/api/tour").json()["steps"]
        assert [s["id"] for s in got] == [s["id"] for s in tour.steps()]
        for s in got:
            assert c.get(f"/api/narration/{s['narration']}").json()["text"] == s["text"]


@pytest.mark.parametrize(("edit", "words"), [
    (lambda s: s[1].pop("target"), "step 1 needs a non-empty string 'target'"),
    (lambda s: s[2].update(route="attention"), "route must start with '#/'"),
    (lambda s: s[3].update(id=s[0]["id"]), "is used twice"),
])
def test_a_broken_file_names_the_step_and_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                edit, words: str) -> None:  # noqa: ANN001
    data = json.loads(tour.TOUR_FILE.read_text())
    edit(data["steps"])
    bad = tmp_path / "tour.json"
    bad.write_text(json.dumps(data))
    monkeypatch.setattr(tour, "TOUR_FILE", bad)
    tour.steps.cache_clear()
    try:
        with pytest.raises(ValueError, match=re.escape(words)):
            tour.steps()
    finally:
        tour.steps.cache_clear()
