"""LLM-as-judge: position swapping, Wilson interval, and skips for bad endpoints/verdicts."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from llmlab.eval.judge import endpoint_judge, judge_pairs, parse_verdict
from llmlab.eval.metrics import wilson_interval

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
    """A tiny OpenAI-compatible stub: a sensible verdict, or junk when the prompt says MALFORMED."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

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
    r = judge_pairs(prompts, [*A, "x", "y"], [*B, "x", "y"], endpoint_judge(stub_url))
    m = r["metrics"]
    assert (m["wins"], m["losses"], m["ties"]) == (2, 1, 1)
    assert m["skipped"] == 2 and m["skipped_malformed"] == 1 and m["skipped_unreachable"] == 1


def test_unreachable_endpoint_skips_everything() -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    m = judge_pairs(PROMPTS, A, B, endpoint_judge(dead, timeout=2))["metrics"]
    assert m["judged"] == 0 and m["skipped_unreachable"] == 4


def test_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="one answer per prompt"):
        judge_pairs(PROMPTS, A[:2], B, lambda ts: ts)  # type: ignore[arg-type,return-value]
