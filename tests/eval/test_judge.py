"""LLM-as-judge: position swapping, Wilson interval, and skips for bad endpoints/verdicts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmlab.eval.judge import JUDGE_PROMPT, endpoint_judge, judge_pairs, listed_model, parse_verdict
from llmlab.eval.metrics import wilson_interval

from .helpers import ROOT, cli

PROMPTS = ["q1", "q2", "q3", "q4"]
A = ["GOOD a1", "GOOD a2", "GOOD a3", "meh a4"]
B = ["meh b1", "meh b2", "GOOD b3", "GOOD b4"]


def _prefers_good(text: str) -> str:
    first = text.split("Answer 1:")[1].split("Answer 2:")[0]
    return "1" if "GOOD" in first else "2"


def test_position_swapping_cancels_a_biased_judge() -> None:
    r = judge_pairs(PROMPTS, A, B, lambda ts: ["1" for _ in ts])
    assert r["metrics"]["ties"] == 4 and r["metrics"]["win_rate"] == 0.5


def test_consistent_judge_and_interval() -> None:
    r = judge_pairs(PROMPTS, A, B, lambda ts: [_prefers_good(t) for t in ts])["metrics"]
    # q1, q2: A wins both orders; q3 both GOOD -> slot 1 each time -> tie; q4: B wins.
    assert (r["wins"], r["losses"], r["ties"]) == (2, 1, 1)
    assert r["win_rate"] == pytest.approx(2.5 / 4)
    assert (r["ci95_low"], r["ci95_high"]) == pytest.approx(wilson_interval(2.5, 4))


def test_verdict_parsing() -> None:
    assert parse_verdict(" 2") == 2 and parse_verdict("Answer 1 is better") == 1
    assert parse_verdict("**1**") == 1
    assert parse_verdict("Both are fine") is None and parse_verdict("12") is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def stub_url() -> Iterator[str]:
    """A tiny OpenAI-compatible stub: a sensible verdict, or junk when the prompt says MALFORMED;
    it lists no models, so it must be given a model name."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": []}

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        text = body["messages"][-1]["content"]
        reply = "I refuse to choose." if "MALFORMED" in text else _prefers_good(text)
        if "BROKEN" in text:
            return {"choices": []}
        return {"choices": [{"message": {"role": "assistant", "content": reply}}]}

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + 20
    while not srv.started:
        assert time.time() < deadline, "stub did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(timeout=5)


def test_endpoint_judge_skips_malformed_and_broken(stub_url: str) -> None:
    prompts = [*PROMPTS, "MALFORMED q5", "BROKEN q6"]
    r = judge_pairs(prompts, [*A, "x", "y"], [*B, "x", "y"], endpoint_judge(stub_url, "stub"))
    m = r["metrics"]
    assert (m["wins"], m["losses"], m["ties"]) == (2, 1, 1)
    assert m["skipped"] == 2 and m["skipped_malformed"] == 1 and m["skipped_unreachable"] == 1


def test_unreachable_endpoint_skips_everything() -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    m = judge_pairs(PROMPTS, A, B, endpoint_judge(dead, "m", timeout=2))["metrics"]
    assert m["judged"] == 0 and m["skipped_unreachable"] == 4


def test_default_model_needs_a_listing_endpoint(stub_url: str) -> None:
    """With no model name the judge asks /v1/models; a dead endpoint, an empty list or an
    HTTP error is then an error that names the endpoint, raised before any request."""
    dead = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(RuntimeError, match=f"judge endpoint {dead}: cannot reach {dead}/v1/models"):
        endpoint_judge(dead, timeout=2)
    with pytest.raises(RuntimeError, match=f"judge endpoint {stub_url}: .* lists no models"):
        endpoint_judge(stub_url)
    with pytest.raises(RuntimeError, match=f"judge endpoint {stub_url}/x: .* HTTP 404"):
        listed_model(f"{stub_url}/x")


def test_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="one answer per prompt"):
        judge_pairs(PROMPTS, A[:2], B, lambda ts: ts)  # type: ignore[arg-type,return-value]


# ---- through the CLI: a live `llmlab serve` process as the judge, then bad judges ---------
@pytest.fixture(scope="module")
def serve_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real `llmlab serve` in its own process on a free port (models load on first use)."""
    import httpx

    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "llmlab.cli", "serve", "--port",
                                 str(port), "--lazy"], env=env, stdout=fh, stderr=fh)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, f"llmlab serve exited:\n{log.read_text()[-2000:]}"
            assert time.time() < deadline, f"llmlab serve did not start:\n{log.read_text()}"
            try:
                if httpx.get(f"{url}/v1/models", timeout=5, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _judge_cli(model: Path, adapter: Path, url: str, out: Path, *extra: str
               ) -> subprocess.CompletedProcess:
    return cli("eval", "judge", "--model-a", str(model), "--model-b", str(model),
               "--adapter-b", str(adapter), "--judge-base-url", url, "--max-new-tokens", "12",
               "--judge-timeout", "600", "--no-progress", "--out", str(out), *extra)


def test_judge_cli_with_live_llmlab_serve(serve_url: str, tiny_dir: Path, peft_adapter: Path,
                                          tmp_path: Path) -> None:
    """Every verdict is the one the server gives the official `openai` client for the same
    judge prompt, and the tallies follow from those replies by the position-swap rule."""
    from openai import OpenAI

    out = tmp_path / "judge.json"
    r = _judge_cli(tiny_dir, peft_adapter, serve_url, out, "--limit", "2")
    rep = json.loads(out.read_text())
    (res,) = rep["results"]
    m, items = res["metrics"], res["samples"]
    assert r.returncode == (0 if m["judged"] else 1), r.stderr
    assert m["skipped_unreachable"] == 0 and len(items) == 2
    assert rep["adapter"] is None and res["config"]["adapter_b"] == str(peft_adapter)
    assert any(it["answer_a"] != it["answer_b"] for it in items)  # the adapter mattered

    client = OpenAI(base_url=f"{serve_url}/v1", api_key="unused")
    listed = client.models.list().data[0].id  # no --judge-model: the server's first listed
    assert res["config"]["judge_model"] == listed
    assert listed_model(f"{serve_url}/v1/") == listed
    tally = {"A": 0, "B": 0, "tie": 0, "skipped": 0}
    for it in items:
        replies = []
        for first, second in ((it["answer_a"], it["answer_b"]), (it["answer_b"], it["answer_a"])):
            text = JUDGE_PROMPT.format(prompt=it["prompt"], first=first, second=second)
            resp = client.chat.completions.create(
                model=listed, temperature=0, max_tokens=8,
                messages=[{"role": "user", "content": text}])
            replies.append(resp.choices[0].message.content)
        assert replies == it["replies"]
        v = [parse_verdict(x) for x in replies]
        want = ("skipped" if None in v else "A" if v == [1, 2] else "B" if v == [2, 1]
                else "tie")
        assert it["verdict"] == want
        tally[want] += 1
    assert (m["wins"], m["losses"], m["ties"], m["skipped_malformed"]) == \
        (tally["A"], tally["B"], tally["tie"], tally["skipped"])
    if m["judged"]:
        assert m["win_rate"] == pytest.approx((tally["A"] + 0.5 * tally["tie"]) / m["judged"])
    assert f"skipped {m['skipped']}" in r.stdout


def test_judge_cli_reports_and_skips_bad_replies(stub_url: str, tiny_dir: Path,
                                                 peft_adapter: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n"
                               for p in ("q1", "MALFORMED q2", "BROKEN q3")))
    out = tmp_path / "judge.json"
    r = _judge_cli(tiny_dir, peft_adapter, stub_url, out, "--prompts", str(prompts),
                   "--judge-model", "stub")
    assert r.returncode == 0, r.stderr
    assert "skipped 2: 1 unreachable, 1 malformed" in r.stdout
    m = json.loads(out.read_text())["results"][0]["metrics"]
    assert (m["judged"], m["skipped_malformed"], m["skipped_unreachable"]) == (1, 1, 1)


def test_judge_cli_unreachable_endpoint(tiny_dir: Path, peft_adapter: Path,
                                        tmp_path: Path) -> None:
    out = tmp_path / "judge.json"
    r = _judge_cli(tiny_dir, peft_adapter, f"http://127.0.0.1:{_free_port()}", out, "--limit",
                   "3", "--judge-timeout", "5", "--judge-model", "m")
    assert r.returncode == 1  # nothing could be judged
    assert "skipped 3: 3 unreachable, 0 malformed" in r.stdout
    assert "judge request failed" in r.stderr
    m = json.loads(out.read_text())["results"][0]["metrics"]
    assert m["judged"] == 0 and m["skipped_unreachable"] == 3


def test_judge_cli_no_model_and_dead_endpoint(tiny_dir: Path, peft_adapter: Path,
                                              tmp_path: Path) -> None:
    """Without --judge-model a dead endpoint is an error naming it, before any answers."""
    dead = f"http://127.0.0.1:{_free_port()}"
    out = tmp_path / "judge.json"
    r = _judge_cli(tiny_dir, peft_adapter, dead, out, "--limit", "2", "--judge-timeout", "5")
    assert r.returncode == 2 and not out.exists()
    assert f"error: judge endpoint {dead}: cannot reach {dead}/v1/models" in r.stderr
