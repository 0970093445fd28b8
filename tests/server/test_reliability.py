"""Issue #27 (reliability and security): hostile or careless input gets a 4xx naming the
field, never a 5xx or a hang; abandoned work stops; one request can't starve the others."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Live, live_server

SEED_OVER = 2**64  # one past what torch.Generator.manual_seed takes


def _param(r: httpx.Response) -> str | None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    return r.json()["error"]["param"]


def test_out_of_range_seed_is_a_4xx_naming_seed(server) -> None:  # noqa: ANN001
    msgs = [{"role": "user", "content": "hi"}]
    for seed in (SEED_OVER, -(2**63) - 1):
        r = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"messages": msgs, "max_tokens": 2, "seed": seed},
            timeout=30,
        )
        assert _param(r) == "seed"
    r = httpx.post(
        f"{server.url}/api/decode/next",
        json={"text": "hi", "seed": SEED_OVER, "temperature": 1.0},
        timeout=30,
    )
    assert _param(r) == "seed"
    # The largest seed torch takes still works, and the server still answers.
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"messages": msgs, "max_tokens": 2, "seed": 2**64 - 1, "temperature": 1.0},
        timeout=60,
    )
    assert r.status_code == 200, r.text


def test_generate_cli_names_the_seed_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from llmlab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["generate", "--prompt", "hi", "--seed", str(SEED_OVER)])
    assert e.value.code == 2 and "--seed" in capsys.readouterr().err


@pytest.fixture(scope="module")
def one_row(lm: Any, enc: Any) -> Iterator[Live]:
    """A second server on the session's models that decodes one request at a time, so a
    request left running would visibly hold up the next one."""
    from llmlab.server.hub import ServerConfig

    cfg = ServerConfig(fast_decode=False, max_new_tokens=1500, max_batch=1)
    with live_server(cfg, lm, enc) as live:
        yield live


def _wait(cond: Callable[[], bool], seconds: float) -> bool:
    deadline = time.time() + seconds
    while not cond():
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_abandoned_non_streamed_chat_is_cancelled(one_row: Live) -> None:
    body = json.dumps({
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": 1500, "temperature": 2.0, "seed": 0,  # noise: no early end-of-turn
    }).encode()
    host, port = one_row.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    stats = one_row.hub.generation_stats
    assert _wait(lambda: stats() is not None and stats()["steps"] >= 3, 60), "never decoded"
    sock.close()  # the client leaves without reading a reply
    assert _wait(lambda: stats()["rows"] == 0, 10), f"still decoding after it left: {stats()}"
    assert stats()["cancelled"] == 1
    t0 = time.time()
    r = httpx.post(
        f"{one_row.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=60,
    )
    assert r.status_code == 200 and time.time() - t0 < 30


def test_a_folder_that_is_no_model_is_a_4xx_naming_model(server, tmp_path: Path) -> None:  # noqa: ANN001
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "nonsense"}')
    for model in ("/etc", "/", "~", str(empty), str(broken)):
        r = httpx.post(f"{server.url}/api/attention", json={"text": "hi", "model": model},
                       timeout=60)
        assert _param(r) == "model", model
        r = httpx.get(f"{server.url}/api/positions", params={"model": model}, timeout=60)
        assert _param(r) == "model", model
    for tok in ("/etc", "/", str(empty)):
        r = httpx.post(f"{server.url}/api/tokenize", json={"text": "hi", "tokenizer": tok})
        assert _param(r) == "tokenizer", tok


def test_embeddings_total_input_is_capped(server) -> None:  # noqa: ANN001
    each = server.hub.cfg.max_text_chars * 4  # the per-string limit
    n = server.hub.cfg.max_text_chars * 16 // each + 1  # one string too many in all
    r = httpx.post(f"{server.url}/v1/embeddings", json={"input": ["a " * (each // 2)] * n})
    assert _param(r) == "input" and "in all" in r.json()["error"]["message"]


def test_embeddings_take_the_model_lock_a_chunk_at_a_time(server, enc) -> None:  # noqa: ANN001
    """Between chunks the lock is free, so decoding steps interleave with a big request."""
    import numpy as np

    from llmlab.server.openai_api import EMBED_TOKENS

    hub, calls = server.hub, []
    run = hub.run

    def counting(fn: Any, *a: Any, **kw: Any) -> Any:
        calls.append(sum(len(enc.tokenizer.encode(t)) for t in a[0]) if a else 0)
        return run(fn, *a, **kw)

    texts = [f"sentence number {i} " * (1 + 12 * (i % 5)) for i in range(20)]
    hub.run = counting
    try:
        r = httpx.post(f"{server.url}/v1/embeddings", json={"input": texts}, timeout=60)
    finally:
        del hub.run  # back to the class's method
    assert r.status_code == 200, r.text
    n_tok = sum(len(enc.tokenizer.encode(t)) for t in texts)
    assert len(calls) >= 3 and max(calls) <= EMBED_TOKENS and sum(calls) == n_tok, calls
    got = np.array([d["embedding"] for d in r.json()["data"]])
    assert np.allclose(got, enc.embed(texts).numpy(), atol=1e-6)


@pytest.mark.parametrize("path,body,param", [
    ("nn/train", {"hidden": [64, 64], "n": 1000, "steps": 5000}, "steps"),
    ("nn/train", {"hidden": [64] * 6, "n": 40, "steps": 100, "grid": 80}, "grid"),
    ("nn/dropout", {"n": 400, "steps": 4000}, "steps"),
])
def test_foundations_work_per_request_is_bounded(server, path: str, body: dict,  # noqa: ANN001
                                                 param: str) -> None:
    r = httpx.post(f"{server.url}/api/foundations/{path}", json=body, timeout=30)
    assert _param(r) == param and "multiply-adds" in r.json()["error"]["message"]


def test_dropout_comparison_stops_when_its_client_leaves(server, monkeypatch) -> None:  # noqa: ANN001
    import threading

    import llmlab.foundations as f

    ended: list[BaseException | None] = []
    started, done = threading.Event(), threading.Event()
    real = f.dropout_comparison

    def spy(*a: Any, **kw: Any) -> Any:
        started.set()
        try:
            out = real(*a, **kw)
        except BaseException as e:
            ended.append(e)
            raise
        else:
            ended.append(None)
            return out
        finally:
            done.set()

    monkeypatch.setattr(f, "dropout_comparison", spy)
    body = json.dumps({"n": 100, "steps": 2000}).encode()  # the page's own request
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        b"POST /api/foundations/nn/dropout HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    assert started.wait(30)
    t0 = time.time()
    sock.close()
    assert done.wait(30)
    assert ended and ended[0] is not None and type(ended[0]).__name__ == "_Gone", ended
    assert time.time() - t0 < 10


@pytest.mark.parametrize("params,param", [
    ({"d_out": -5}, "d_out"), ({"d_out": 0}, "d_out"), ({"d_out": 10**30}, "d_out"),
    ({"targets": "q_proj,nope"}, "targets"),
])
def test_lora_counts_ranges(server, params: dict, param: str) -> None:  # noqa: ANN001
    r = httpx.get(f"{server.url}/api/lora/counts", params=params)
    assert _param(r) == param
    ok = httpx.get(f"{server.url}/api/lora/counts", params={"d_out": 1024}).json()
    assert ok["d_out"] == 1024 and 0 < ok["matrix_pct"] < 100


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions",
     '{"max_tokens": 2, "messages": [{"role": "user", "content": "a\\ud800b"}]}',
     "messages.0.content"),
    ("/v1/chat/completions", '{"max_tokens": 2, "messages": [{"role": "user", "content": '
     '[{"type": "text", "text": "\\udfff"}]}]}', "messages.0.content"),
    ("/v1/chat/completions",
     '{"max_tokens": 2, "messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud800"]}',
     "stop"),
    ("/v1/embeddings", '{"input": ["fine", "\\ud800"]}', "input"),
    ("/api/attention", '{"text": "\\ud800"}', "text"),
    ("/api/tokenize", '{"text": "x\\udbff"}', "text"),
    ("/api/decode/next", '{"text": "\\ud800"}', "text"),
])
def test_lone_surrogates_are_refused_naming_the_field(server, path: str, body: str,  # noqa: ANN001
                                                      param: str) -> None:
    r = httpx.post(f"{server.url}{path}", content=body.encode(),
                   headers={"content-type": "application/json"}, timeout=30)
    msg = r.json()["error"]["message"]  # ours, or pydantic's for a length-checked str
    assert _param(r) == param and ("surrogate" in msg or "unicode" in msg), msg


def test_nn_training_stream_stops_when_its_client_leaves(server, monkeypatch) -> None:  # noqa: ANN001
    import llmlab.foundations as f

    grids: list[float] = []  # one per snapshot the server computes
    real = f.decision_grid

    def spy(*a: Any, **kw: Any) -> Any:
        grids.append(time.time())
        return real(*a, **kw)

    monkeypatch.setattr(f, "decision_grid", spy)
    # Within the work bound, but seconds of work: 62 snapshots.
    body = json.dumps({"n": 400, "hidden": [32, 32], "steps": 3800, "grid": 40}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        b"POST /api/foundations/nn/train HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    seen = b""
    while seen.count(b"event: step") < 2:
        chunk = sock.recv(65536)
        assert chunk, "the stream ended early"
        seen += chunk
    sock.close()
    left = time.time()
    time.sleep(2)
    n = len(grids)
    time.sleep(1)
    assert len(grids) == n < 40, (len(grids), [round(t - left, 2) for t in grids])
