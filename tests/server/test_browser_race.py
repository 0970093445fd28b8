"""The speedrun race on the pretraining page, in Chromium: one ▶ trains tiny-cpu, then
speedrun-cpu (a few steps each, a target early training reaches) on the same prepared data.
The outside reference is each run's own metrics.jsonl: every point drawn is one of its
evaluation records (train_time_s, val_bpb), each time shown is its time_to_target_s, and
the ratio shown is one of those over the other. The switches shown are the preset table's
(read back from the server), and ■ stops a race before its second run starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from .browser import shot

# A few steps evaluated every 4: val bpb starts near 3.25 (a uniform guess over 4,096 ids,
# ~3.7 bytes a token) and both recipes pass 3.0 within ~12 steps; 24 leaves room, and a run
# stops at the target.
STEPS, EVERY, TARGET = 24, 4, 3.0


def evals(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_bpb" in r]


def shown_value(v: Any) -> str:
    """A switch as the page prints it: integers with thousands commas, floats as JS's
    String(), which for these values is Python's repr."""
    return f"{v:,}" if isinstance(v, int) else repr(v) if isinstance(v, float) else str(v)


def test_race_from_the_page(page, server) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/#/pretrain")
    pg.wait_for_selector("[data-testid=race-recipes][data-ready]")
    setup = httpx.get(f"{server.url}/api/pretrain/race").json()
    assert pg.input_value("[data-testid=race-target]") == str(setup["target_val_bpb"])
    for r in setup["recipes"]:
        for k, v in r["switches"].items():
            cell = f"[data-testid=race-recipes] td[data-preset='{r['preset']}'][data-key={k}]"
            assert pg.inner_text(cell) == shown_value(v), (r["preset"], k)

    pg.fill("[data-testid=race-target]", str(TARGET))
    pg.fill("[data-testid=race-every]", str(EVERY))
    pg.fill("[data-testid=race-steps]", str(STEPS))
    pg.click("[data-testid=race-start]")
    pg.wait_for_selector("[data-testid=race-status][data-status=finished]", timeout=240_000)
    pg.wait_for_function("document.querySelector('[data-testid=race-ratio]').dataset.value")
    race = httpx.get(f"{server.url}/api/pretrain/race").json()["race"]
    assert [ln["preset"] for ln in race["lanes"]] == ["tiny-cpu", "speedrun-cpu"]
    runs = server.hub.runs()
    dirs = {ln["role"]: runs.run_dir(ln["run"]) for ln in race["lanes"]}

    times = {}
    for role, d in dirs.items():
        disk = evals(d)
        assert disk and disk[-1].get("target_reached"), (role, disk)
        shown = pg.eval_on_selector_all(
            f"[data-testid=race-series][data-role={role}] circle.race-pt",
            "cs => cs.map(c => [Number(c.dataset.x), Number(c.dataset.y)])")
        assert shown == [[r["train_time_s"], r["val_bpb"]] for r in disk], role
        times[role] = disk[-1]["time_to_target_s"]
        assert float(pg.get_attribute(f"[data-testid=race-time-{role}]", "data-value")) \
            == times[role]
        assert f"{times[role]:.1f} s" in pg.inner_text(f"[data-testid=race-time-{role}]")
        assert pg.locator(f"[data-testid=race-hit][data-role={role}]").count() == 1
        train = json.loads((d / "config.json").read_text())["train"]
        assert (train["target_val_bpb"], train["eval_every"]) == (TARGET, EVERY)
    ratio = times["recipe"] / times["baseline"]
    assert float(pg.get_attribute("[data-testid=race-ratio]", "data-value")) == ratio
    assert f"{ratio:.3f}×" in pg.inner_text("[data-testid=race-ratio]")

    # Both series drawn with a legend naming each, the target as a horizontal line, axes named.
    assert pg.locator("[data-testid=race-series] path").count() == 2
    legend = pg.eval_on_selector_all("[data-testid=race-legend-item]",
                                     "gs => gs.map(g => g.textContent)")
    assert legend == [f"tiny-cpu (baseline): target in {times['baseline']:.1f} s",
                      f"speedrun-cpu (recipe): target in {times['recipe']:.1f} s"]
    line = pg.locator("[data-testid=race-target-line]")
    assert float(line.get_attribute("data-y")) == TARGET
    assert line.get_attribute("y1") == line.get_attribute("y2")
    assert "validation bits per byte" in pg.text_content("[data-testid=race-svg] [data-axis=y]")
    assert "training seconds" in pg.text_content("[data-testid=race-svg] [data-axis=x]")
    shot(pg, "pretrain-race")

    # In turn, on the same data: the recipe started after the baseline ended, and read the
    # data the baseline prepared.
    lab = {role: json.loads((d / "lab.json").read_text()) for role, d in dirs.items()}
    assert lab["recipe"]["created"] >= lab["baseline"]["ended"]
    for role, rec in lab.items():
        print(f"{role}: {rec['ended'] - rec['created']:.1f} s wall, "
              f"{times[role]:.1f} s training to {TARGET} bpb")
    assert (dirs["recipe"] / "data").resolve() == (dirs["baseline"] / "data").resolve()

    # ■ stops a race: the running baseline stops and the recipe never starts.
    pg.fill("[data-testid=race-steps]", "")
    pg.click("[data-testid=race-start]")
    pg.wait_for_selector("[data-testid=race-status][data-status=running]")
    pg.click("[data-testid=race-stop]")
    pg.wait_for_selector("[data-testid=race-status][data-status=stopped]", timeout=120_000)
    race = httpx.get(f"{server.url}/api/pretrain/race").json()["race"]
    assert race["lanes"][0]["status"] == "stopped" and race["lanes"][1]["run"] is None
    assert httpx.get(f"{server.url}/api/runs").json()["running"] == []
