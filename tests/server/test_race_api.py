"""The speedrun race over the API, cheaply: what a race runs (the pinned target and each
recipe's switches, against the preset table and TrainConfig's defaults), bad fields as 4xx
naming the field, a second start (race or run) as a 409 while one goes, and stop ending the
race before its second run starts. The race run to its end is tests/server/test_browser_race.py."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from llmlab.train import speedrun
from llmlab.train.config import TrainConfig
from llmlab.train.presets import PRESETS


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from llmlab.server.app import create_app
    from llmlab.server.hub import ServerConfig

    # The default run slots (one): a race runs its two recipes in turn.
    cfg = ServerConfig(preload=False, runs_dir=str(tmp_path_factory.mktemp("runs")),
                       run_threads=1)
    with TestClient(create_app(cfg)) as c:
        yield c


def wait(http: TestClient, url: str, ok: Any, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = http.get(url).json()
        if ok(got):
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out: {got}")


def test_setup_reads_the_preset_table(http: TestClient) -> None:
    s = http.get("/api/pretrain/race").json()
    # One source of truth: the benchmark's pinned target is the library's.
    assert s["target_val_bpb"] == speedrun.TARGET_BPB
    bench = (Path(__file__).parents[2] / "benchmarks" / "speedrun_cpu.py").read_text()
    assert "from llmlab.train.speedrun import" in bench and "default=TARGET_BPB" in bench
    assert s["eval_every"] == 25 and s["order"] == "in turn"
    assert [r["preset"] for r in s["recipes"]] == ["tiny-cpu", "speedrun-cpu"]
    defaults = dataclasses.asdict(TrainConfig())
    for r in s["recipes"]:
        train = {**defaults, **PRESETS[r["preset"]]["train"]}
        sw = r["switches"]
        for k in ("optimizer", "schedule", "batch_size", "max_steps", "lr"):
            assert sw[k] == train[k], (r["preset"], k)
        assert sw["tokens_per_step"] == train["batch_size"] * train["seq_len"]
        assert ("muon_lr" in sw) == (train["optimizer"] == "muon")
        assert ("cooldown" in sw) == (train["schedule"] == "wsd")
        assert sw["precision"] == train["precision"]
        assert sw.get("embed_lr") == (train["embed_lr"] or None)
        model = PRESETS[r["preset"]]["model"]
        assert sw["embeddings"] == ("tied" if model["tie_embeddings"] else "untied")
        assert sw.get("value_embeds") == (model.get("value_embeds") or None)
        assert r["data"] == PRESETS[r["preset"]]["data"]
    for key in s["sources"]:
        assert http.get(f"/api/source/{key}").status_code == 200, key
    src = {k: http.get(f"/api/source/{k}").json()["source"] for k in s["sources"]}
    assert '"speedrun-cpu"' in src["pretrain.race_presets"]
    assert "target_val_bpb" in src["pretrain.race_target"]


@pytest.mark.parametrize(("body", "field"), [
    ({"target_val_bpb": 0}, "target_val_bpb"), ({"target_val_bpb": -1.0}, "target_val_bpb"),
    ({"target_val_bpb": 8.5}, "target_val_bpb"), ({"target_val_bpb": "fast"}, "target_val_bpb"),
    ({"eval_every": 0}, "eval_every"), ({"eval_every": 2.5}, "eval_every"),
    ({"max_steps": 0}, "max_steps"), ({"seed": -1}, "seed"), ({"target": 1.2}, "target"),
])
def test_bad_fields_are_named(http: TestClient, body: dict, field: str) -> None:
    r = http.post("/api/pretrain/race", json=body)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["param"] == field and field in err["message"], r.text
    assert http.get("/api/runs").json()["running"] == []  # nothing started


def test_busy_then_stop_ends_both(http: TestClient, tmp_path: Path) -> None:
    r = http.post("/api/pretrain/race", json={})  # the full race: stopped long before its end
    assert r.status_code == 201, r.text
    race = r.json()
    assert race["target_val_bpb"] == http.get("/api/pretrain/race").json()["target_val_bpb"]
    base, rec = race["lanes"]
    assert (base["preset"], base["status"], rec["run"], rec["status"]) == (
        "tiny-cpu", "running", None, "waiting")
    # One race at a time, and its run holds the server's one run slot.
    again = http.post("/api/pretrain/race", json={})
    assert again.status_code == 409 and race["id"] in again.json()["error"]["message"]
    run = http.post("/api/runs", json={"kind": "pretrain", "options": {"preset": "micro"}})
    assert run.status_code == 409 and base["run"] in run.json()["error"]["message"]
    # The run's own options: the preset, the race's target and evaluation interval.
    lab = json.loads((Path(http.get("/api/runs").json()["root"]) / base["run"] / "lab.json")
                     .read_text())
    assert lab["options"]["preset"] == "tiny-cpu"
    assert lab["options"]["target_val_bpb"] == race["target_val_bpb"]
    assert lab["options"]["eval_every"] == 25

    stopped = http.post(f"/api/pretrain/race/{race['id']}/stop").json()
    assert stopped["status"] in ("stopping", "stopped")
    url = f"/api/pretrain/race/{race['id']}"
    done = wait(http, url, lambda g: g["status"] == "stopped")
    assert done["lanes"][0]["status"] == "stopped"
    assert done["lanes"][1]["run"] is None  # the recipe never started
    time.sleep(1.0)  # longer than the race's poll: still nothing started
    assert http.get("/api/runs").json()["running"] == []
    assert http.get(url).json()["lanes"][1]["run"] is None
    again = http.post(f"/api/pretrain/race/{race['id']}/stop")
    assert again.status_code == 400 and again.json()["error"]["param"] == "race"
    assert http.get("/api/pretrain/race/race-nosuch").status_code == 404
    assert http.get("/api/pretrain/race").json()["race"]["id"] == race["id"]
