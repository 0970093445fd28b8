"""The Evaluation page's runs over the API, beyond the benchmark tasks: LLM-as-judge with this
very server as the judge, and a run's checkpoint (`run:ID@STEP`) as the model evaluated.

A judge run is `llmlab eval judge` in a worker whose judge endpoint is the server's own
/v1/chat/completions (the run manager passes the server's URL): every verdict must be the one
the official `openai` client gets from the server for the same judge prompt. A checkpoint's
perplexity must equal transformers' loss on that checkpoint's HF export."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmlab.eval.judge import JUDGE_PROMPT, parse_verdict

from .lab_helpers import finish
from .pipeline_runs import pretrained

BASE = "smollm2-135m-instruct"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_judge_run_asks_this_server_and_its_verdicts_are_the_servers(server: Any) -> None:
    from openai import OpenAI

    pre = pretrained(server.url)
    a, b = f"run:{pre['id']}", f"run:{pre['id']}@1"  # the final model and its first checkpoint
    run = finish(server.url, "judge", {"model_a": a, "model_b": b, "judge_model": BASE,
                                       "limit": 2, "max_new_tokens": 12})
    assert f"--judge-base-url={server.url}" in run["argv"]  # the server's own URL, not typed
    root = server.hub.runs().run_dir(pre["id"])
    assert f"--model-b={root / 'checkpoints' / 'step_0000001' / 'model'}" in run["argv"]

    got = httpx.get(f"{server.url}/api/eval/report/{run['id']}", timeout=30).json()
    (row,) = got["summary"]
    m = got["results"][0]["metrics"]
    items = httpx.get(f"{server.url}/api/eval/report/{run['id']}/examples",
                      params={"task": "judge"}, timeout=30).json()["samples"]
    assert len(items) == 2 and m["judged"] + m["skipped"] == 2
    assert m["wins"] + m["losses"] + m["ties"] == m["judged"] and m["skipped_unreachable"] == 0

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    tally = {"A": 0, "B": 0, "tie": 0, "skipped": 0}
    for it in items:
        replies = []
        for first, second in ((it["answer_a"], it["answer_b"]), (it["answer_b"], it["answer_a"])):
            resp = client.chat.completions.create(
                model=BASE, temperature=0, max_tokens=8, messages=[{"role": "user", "content":
                JUDGE_PROMPT.format(prompt=it["prompt"], first=first, second=second)}])
            replies.append(resp.choices[0].message.content)
        assert replies == it["replies"]
        v = [parse_verdict(x) for x in replies]
        want = "skipped" if None in v else "A" if v == [1, 2] else "B" if v == [2, 1] else "tie"
        assert it["verdict"] == want
        tally[want] += 1
    assert (m["wins"], m["losses"], m["ties"], m["skipped_malformed"]) == \
        (tally["A"], tally["B"], tally["tie"], tally["skipped"])
    if m["judged"]:
        assert row["metric"] == "win_rate" and row["n"] == m["judged"]
        assert row["value"] == pytest.approx((tally["A"] + tally["tie"] / 2) / m["judged"])
        assert (row["low"], row["high"]) == (m["ci95_low"], m["ci95_high"])


def test_a_judge_that_does_not_answer_fails_soon_with_its_reason(server: Any) -> None:
    """A dead endpoint (this server allows typed URLs): after a few failed requests in a row
    the rest are not sent, and the run fails naming why, instead of waiting per prompt."""
    pre = pretrained(server.url)
    dead = f"http://127.0.0.1:{_free_port()}"
    t0 = time.time()
    r = httpx.post(f"{server.url}/api/runs", timeout=60, json={"kind": "judge", "options": {
        "model_a": f"run:{pre['id']}", "model_b": f"run:{pre['id']}@1", "judge_model": "m",
        "judge_base_url": dead, "judge_timeout": 5, "limit": 3, "max_new_tokens": 4}})
    assert r.status_code == 201, r.text
    while (run := httpx.get(f"{server.url}/api/runs/{r.json()['id']}", timeout=30).json()
           )["status"] in ("running", "stopping"):
        assert time.time() - t0 < 120, "the judge run hung"
        time.sleep(0.5)
    assert run["status"] == "failed"
    assert "none of the 3 prompts could be judged (3 without a reply" in run["error"]
    assert "ConnectError" in run["error"]
    log = (server.hub.runs().run_dir(run["id"]) / "worker.log").read_text()
    assert log.count("judge request failed") == 3 and "the other 3 are not sent" in log


def test_requests_cannot_point_the_judge_elsewhere(tmp_path: Path) -> None:
    """Without --allow-local-models: no endpoint URL and no local judge model in a request,
    and a checkpoint must exist; each is a 400 naming its option, and nothing starts."""
    from fastapi.testclient import TestClient

    from llmlab.server.app import create_app
    from llmlab.server.hub import ServerConfig

    cfg = ServerConfig(runs_dir=str(tmp_path), allow_local_models=False, preload=False)
    base = {"model_a": BASE, "model_b": BASE}
    with TestClient(create_app(cfg, "http://127.0.0.1:9")) as c:
        for extra, key in (({"judge_base_url": "http://example.com"}, "judge_base_url"),
                           ({"judge": BASE}, "judge"), ({"judge_model": "/tmp/x"}, "judge_model"),
                           ({"model_b": "run:nosuch@1"}, "model_b")):
            r = c.post("/api/runs", json={"kind": "judge", "options": {**base, **extra}})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["message"].startswith(f"options.{key}:"), r.text
        assert c.get("/api/runs").json()["runs"] == []


def test_eval_of_a_checkpoint_equals_transformers_on_it(server: Any, tmp_path: Path) -> None:
    """`run:ID@1` on the evaluation page evaluates checkpoint 1: its perplexity is
    transformers' loss on that checkpoint's HF export, and a step it lacks is a 400."""
    import torch
    from transformers import AutoModelForCausalLM

    import llmlab
    from llmlab.data.corpora import corpus_text
    from llmlab.weights.hf import save_hf

    pre = pretrained(server.url)
    bad = httpx.post(f"{server.url}/api/runs", timeout=60, json={"kind": "eval", "options": {
        "model": f"run:{pre['id']}@7", "task": "perplexity:kjv"}})
    assert bad.status_code == 400 and "no checkpoint at step 7; it has [1, 2]" in bad.text
    run = finish(server.url, "eval", {"model": f"run:{pre['id']}@1", "task": "perplexity:kjv",
                                      "limit": 64})
    ckpt = server.hub.runs().run_dir(pre["id"]) / "checkpoints" / "step_0000001" / "model"
    rep = json.loads((server.hub.runs().run_dir(run["id"]) / "report.json").read_text())
    assert rep["model"] == str(ckpt)
    got = rep["results"][0]["metrics"]

    lm = llmlab.load(str(ckpt))
    save_hf(lm.model, tmp_path / "hf", lm.tokenizer)
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = lm.tokenizer.encode(corpus_text("kjv")[:64 * 65], allowed_special="none")[:64]
    with torch.no_grad():
        loss = ref(torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert got["tokens"] == 63 and got["nll"] == pytest.approx(float(loss), abs=1e-4)
