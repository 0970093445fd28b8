"""Training runs over the API, on one micro pretraining run reused by every step: its SSE
stream, a second start's 409, stop (the checkpoint loads), resume, a SIGKILLed worker (an
error naming the signal, the run dir still loadable), resume to the end, and a restarted
server listing it. Bad options are 400s naming the flag; local paths are refused."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import llmlab
from llmlab.lab.rundir import load_run
from llmlab.lab.runs import RunManager

# Small: a 512-id BPE trains in seconds on the KJV; a depth-2 model, with steps enough that
# it is still training when the test stops it (a quiet machine runs ~50 steps a second).
STEPS = 600
OPTIONS = {"preset": "micro", "depth": 2, "tokenizer": "bpe:512", "max_steps": STEPS,
           "eval_every": 20, "ckpt_every": 20, "batch_size": 8, "log_every": 5,
           "sample_tokens": 16}


def events(url: str, until: Any = None, timeout: float = 240) -> Iterator[tuple[str, dict]]:
    """Parse a run's SSE stream: (event, data) pairs until "end" or `until(event, data)`."""
    with httpx.stream("GET", url, timeout=httpx.Timeout(timeout, connect=10)) as r:
        assert r.status_code == 200, r.read()
        name, data = "message", ""
        for line in r.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif not line and data:
                ev = (name, json.loads(data))
                yield ev
                if name == "end" or (until and until(*ev)):
                    return
                name, data = "message", ""


def wait(url: str, ok: Any, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = httpx.get(url).json()
        if ok(run):
            return run
        time.sleep(0.3)
    raise AssertionError(f"timed out: {run}")


@pytest.fixture(scope="module")
def api(server: Any) -> str:
    return f"{server.url}/api/runs"


@pytest.fixture(scope="module")
def run(api: str) -> dict:
    r = httpx.post(api, json={"kind": "pretrain", "options": OPTIONS, "label": "api test"})
    assert r.status_code == 201, r.text
    return r.json()


def test_bad_options_name_their_flag(api: str) -> None:
    for options, flag in (({"max_steps": 0}, "--max-steps"), ({"depth": 0}, "--depth"),
                          ({"preset": "micro", "nosuch_field": 1}, "--nosuch-field"),
                          ({"lr": "fast"}, "--lr")):
        r = httpx.post(api, json={"kind": "pretrain", "options": options})
        assert r.status_code == 400, (options, r.text)
        assert flag in r.json()["error"]["message"], r.text


def test_stream_concurrent_start_stop(api: str, run: dict, server: Any) -> None:
    # A second start while it trains: 409 naming the running run.
    r = httpx.post(api, json={"kind": "pretrain", "options": OPTIONS})
    assert r.status_code == 409 and run["id"] in r.json()["error"]["message"], r.text
    seen: dict[str, list[dict]] = {"metrics": [], "sample": [], "status": []}

    def got_40(ev: str, data: dict) -> bool:  # the step-40 sample and its metrics row
        seen.setdefault(ev, []).append(data)
        return all(any(r["step"] >= 40 for r in seen[k]) for k in ("metrics", "sample"))

    for _ in events(f"{api}/{run['id']}/events", until=got_40):
        pass
    assert seen["status"][0]["status"] == "running"
    losses = [m["loss"] for m in seen["metrics"]]
    assert losses[-1] < losses[0] - 0.5, losses  # it learns: well below where it started
    # Records arrive in batches: the stream may already hold later ones.
    assert [m["step"] for m in seen["metrics"] if "val_loss" in m][:2] == [20, 40]
    assert [s["step"] for s in seen["sample"]][:3] == [0, 20, 40]
    assert all(s["text"].startswith("And it came to pass") for s in seen["sample"])
    # the stream equals the run's own records on disk
    disk = [json.loads(ln) for ln in
            (_dir(server, run) / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss"] for m in disk[:len(losses)]] == losses
    st = httpx.post(f"{api}/{run['id']}/stop").json()
    assert st["status"] in ("stopping", "stopped")
    st = wait(f"{api}/{run['id']}", lambda r: r["status"] not in ("running", "stopping"))
    assert st["status"] == "stopped" and st["error"] is None, st
    assert st["model"] == f"run:{run['id']}" and 40 <= st["step"] < STEPS
    lm = llmlab.load(_dir(server, run))  # the run dir loads: its last checkpoint
    assert lm.model.cfg.n_layer == 2 and lm.model.cfg.d_model == 64


def test_sigkill_is_a_failure_naming_the_signal_and_resume_finishes(api: str, run: dict,
                                                                    server: Any) -> None:
    st = httpx.post(f"{api}/{run['id']}/resume")
    assert st.status_code == 200 and st.json()["status"] == "running", st.text
    step0 = httpx.get(f"{api}/{run['id']}").json()["step"]
    st = wait(f"{api}/{run['id']}", lambda r: r["step"] > step0 and r["pid"])
    os.kill(st["pid"], signal.SIGKILL)
    st = wait(f"{api}/{run['id']}", lambda r: r["status"] != "running")
    assert st["status"] == "failed" and "SIGKILL" in st["error"], st
    assert load_run(_dir(server, run)).model.cfg.n_layer == 2  # still loadable
    # The page's stream of a failed run ends with its error, no spinner left.
    last = list(events(f"{api}/{run['id']}/events"))[-1]
    assert last[0] == "end" and "SIGKILL" in last[1]["error"]
    assert httpx.post(f"{api}/{run['id']}/resume").status_code == 200
    st = wait(f"{api}/{run['id']}", lambda r: r["status"] != "running")
    assert st["status"] == "finished" and st["step"] == STEPS and st["final"], st
    steps = [json.loads(ln)["step"] for ln in
             (_dir(server, run) / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # resumes trimmed, no duplicates


def test_restarted_server_lists_the_run_and_refuses_local_paths(api: str, run: dict,
                                                                server: Any) -> None:
    from fastapi.testclient import TestClient

    from llmlab.server.app import create_app
    from llmlab.server.hub import ServerConfig

    root = _dir(server, run).parent
    listed = {r["id"]: r for r in RunManager(root).list()}
    assert listed[run["id"]]["status"] == "finished"
    cfg = ServerConfig(runs_dir=str(root), allow_local_models=False, preload=False)
    with TestClient(create_app(cfg)) as c:
        runs = c.get("/api/runs").json()["runs"]
        assert [r["status"] for r in runs if r["id"] == run["id"]] == ["finished"]
        for options, code in (({"inputs": "/etc/passwd"}, (400, 403)),
                              ({"tokenizer": "/tmp"}, (400, 403)),
                              ({"data": "/tmp"}, (400, 403))):
            r = c.post("/api/runs", json={"kind": "pretrain", "options": options})
            assert r.status_code in code and "options." in r.text, r.text
            assert r.json()["error"]["message"].split(":")[0] == \
                f"options.{next(iter(options))}"
        assert c.get("/api/runs").json()["running"] == []  # nothing was started
    # The session's server allows local paths: the same file is a corpus there.
    corpus = root.parent / "corpus.txt"
    corpus.write_text("In the beginning\n" * 200)
    r = httpx.post(api, json={"kind": "pretrain", "options": {**OPTIONS, "inputs": str(corpus)}})
    assert r.status_code == 201, r.text
    httpx.post(f"{api}/{r.json()['id']}/stop")
    wait(f"{api}/{r.json()['id']}", lambda r: r["status"] not in ("running", "stopping"))


def _dir(server: Any, run: dict) -> Path:
    return server.hub.runs().run_dir(run["id"])
