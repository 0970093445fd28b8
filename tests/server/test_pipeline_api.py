"""GET /api/pipeline on runs started through the API: the SFT run's parent is the
pretraining run it was started from, as the run manager recorded it (lab.json) and as the CLI
wrote it (config.json: sft.model is that run's directory)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from llmlab.lab import lineage

from .pipeline_runs import chain


def test_pipeline_names_each_runs_parent(server: Any) -> None:
    pre, sft = chain(server.url)
    m = server.hub.runs()
    sft_dir = Path(m.run_dir(sft["id"]))
    # The outside record of what the SFT started from: the CLI's own config.json.
    assert Path(json.loads((sft_dir / "config.json").read_text())["sft"]["model"]) \
        == Path(m.run_dir(pre["id"]))
    assert sft["options"]["model"] == f"run:{pre['id']}"
    body = httpx.get(f"{server.url}/api/pipeline", timeout=30).json()
    stages = {s["id"]: s for s in body["stages"]}
    assert [s.id for s in lineage.STAGES] == [s["id"] for s in body["stages"]]
    run = next(r for r in stages["sft"]["runs"] if r["id"] == sft["id"])
    assert run["parents"] == [{"role": "model", "run": pre["id"], "name": f"run:{pre['id']}"}]
    assert run["status"] == "finished" and run["page"] == "lora"
    got = next(r for r in stages["pretrain"]["runs"] if r["id"] == pre["id"])
    assert got["parents"] == []
    assert {"from": pre["id"], "to": sft["id"], "role": "model"} in body["edges"]
    assert stages["pretrain"]["state"] == stages["sft"]["state"] == "done"
    # "You are here": the stage of the newest run (the session's server holds other tests'
    # runs too, so it need not be this SFT).
    newest = max(m.list(), key=lambda r: r["created"])["id"]
    here = next(s["id"] for s in body["stages"] if any(r["id"] == newest for r in s["runs"]))
    assert body["next"] not in ("pretrain", "sft") and body["current"] == here
    assert body["sources"] and all(
        httpx.get(f"{server.url}/api/source/{k}", timeout=30).status_code == 200
        for k in body["sources"])
    # The route only serializes the library's answer.
    assert {k: v for k, v in body.items() if k != "sources"} == \
        lineage.pipeline(m.list(), m.root)
