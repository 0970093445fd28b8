"""The server over real HTTP: OpenAI API through the official `openai` client, page APIs
and their 4xx errors."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import openai
import pytest


@pytest.fixture(scope="module")
def client(server):  # noqa: ANN001, ANN201
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_healthz(server) -> None:  # noqa: ANN001
    r = httpx.get(f"{server.url}/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_models(client) -> None:  # noqa: ANN001
    ids = {m.id for m in client.models.list()}
    assert {"smollm2-135m-instruct", "minilm-l6-v2"} <= ids


def test_chat_completion_and_stream(client) -> None:  # noqa: ANN001
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=msgs, max_tokens=8, temperature=0
    )
    text = r.choices[0].message.content
    assert text and r.usage.completion_tokens <= 8
    chunks = list(
        client.chat.completions.create(
            model="smollm2-135m-instruct", messages=msgs, max_tokens=8, temperature=0, stream=True
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == text  # greedy: streaming and non-streaming agree
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stop_sequence(client) -> None:  # noqa: ANN001
    r = client.chat.completions.create(
        model="smollm2-135m-instruct",
        temperature=0,
        max_tokens=16,
        stop=["a"],
        messages=[{"role": "user", "content": "Say banana"}],
    )
    assert "a" not in r.choices[0].message.content


def test_json_mode_always_parses(client) -> None:  # noqa: ANN001
    r = client.chat.completions.create(
        model="smollm2-135m-instruct",
        temperature=0.9,
        seed=3,
        max_tokens=48,
        response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Describe a cat as JSON with name and age."}],
    )
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_embeddings_match_library(client, enc) -> None:  # noqa: ANN001
    texts = ["a cat sat on the mat", "stock markets fell"]
    r = client.embeddings.create(model="minilm-l6-v2", input=texts)  # base64 on the wire
    got = np.array([d.embedding for d in r.data])
    assert got.shape == (2, 384)
    assert np.allclose(got, enc.embed(texts).numpy(), atol=1e-6)


def test_openai_errors_name_the_field(client) -> None:  # noqa: ANN001
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model="smollm2-135m-instruct", messages=msgs, temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="smollm2-135m-instruct", messages=msgs, max_tokens=100000
        )
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=msgs)


def test_page_api_errors(server) -> None:  # noqa: ANN001
    u = server.url
    r = httpx.post(f"{u}/api/attention", json={"text": "hi", "layer": 99})
    assert r.status_code == 400 and r.json()["error"]["param"] == "layer"
    r = httpx.post(f"{u}/api/attention", json={"text": "word " * 500})
    assert r.status_code == 400 and r.json()["error"]["param"] == "text"
    r = httpx.post(f"{u}/api/attention", json={"text": ""})
    assert r.status_code == 422 and r.json()["error"]["param"] == "text"
    r = httpx.get(f"{u}/api/lora/counts", params={"r": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "r"
    r = httpx.post(f"{u}/api/decode/next", json={"text": "x", "top_p": 0})
    assert r.status_code == 422 and r.json()["error"]["param"] == "top_p"
    assert httpx.get(f"{u}/api/source/../../etc").status_code == 404


def test_attention_modes_and_stats(server) -> None:  # noqa: ANN001
    body = {"text": "the cat sat", "layer": 2, "head": 1}
    c = httpx.post(f"{server.url}/api/attention", json=body, timeout=60).json()
    b = httpx.post(
        f"{server.url}/api/attention", json={**body, "mode": "bidirectional"}, timeout=60
    ).json()
    n = c["stats"]["tokens"]
    assert c["stats"]["attention_ops"] == n * n * 9 * 30
    assert c["weights"][0][0][1] == 0 and b["weights"][0][0][1] > 0
    for row in c["weights"][0]:
        assert sum(row) == pytest.approx(1, abs=1e-3)


def test_upload_sanitizes_names_and_limits(server) -> None:  # noqa: ANN001
    from llmlab.server.rag_routes import safe_name

    assert safe_name("../../etc/passwd.txt") == "passwd.txt"
    assert safe_name("..\\..\\x.md") == "x.md"
    assert "/" not in safe_name("a/b/../c.txt") and not safe_name("...txt").startswith(".")
    r = httpx.post(
        f"{server.url}/api/rag/upload", files={"file": ("../../evil.txt", b"hello docs")}
    )
    assert r.status_code == 200 and r.json()["name"] == "evil.txt"
    big = b"x" * (server.hub.cfg.max_upload_bytes + 1)
    r = httpx.post(f"{server.url}/api/rag/upload", files={"file": ("big.txt", big)})
    assert r.status_code == 413 and r.json()["error"]["param"] == "file"
    r = httpx.post(f"{server.url}/api/rag/upload", files={"file": ("x.exe", b"MZ")})
    assert r.status_code == 400


CONCURRENT = [
    ("What is the capital of France?", 12, False),
    ("Write a haiku about the sea.", 24, True),
    ("List three prime numbers.", 6, False),
    ("Name a colour.", 16, True),
]


def test_concurrent_chats_batch_and_match_one_by_one(client, server, lm) -> None:  # noqa: ANN001
    """Four greedy chats at once, streaming and not, decode in one batch and give exactly
    the text of our one-request engine (itself tested against transformers)."""
    from concurrent.futures import ThreadPoolExecutor

    from llmlab.generate.chat import chat_ids
    from llmlab.generate.engine import complete, make_params

    def ask(q: str, n: int, stream: bool) -> str:
        kw = dict(model="smollm2-135m-instruct", max_tokens=n, temperature=0)
        msgs = [{"role": "user", "content": q}]
        if not stream:
            return client.chat.completions.create(messages=msgs, **kw).choices[0].message.content
        chunks = client.chat.completions.create(messages=msgs, stream=True, **kw)
        return "".join(c.choices[0].delta.content or "" for c in chunks)

    before = httpx.get(f"{server.url}/healthz").json()["generation"] or {}
    with ThreadPoolExecutor(len(CONCURRENT)) as pool:
        got = list(pool.map(lambda a: ask(*a), CONCURRENT))
    stats = httpx.get(f"{server.url}/healthz").json()["generation"]
    assert stats["peak_rows"] >= 2 and stats["finished"] - before.get("finished", 0) == 4
    for (q, n, _), text in zip(CONCURRENT, got, strict=True):
        ids = chat_ids(lm, [{"role": "user", "content": q}])
        params = make_params(lm.tokenizer, max_new_tokens=n, temperature=0, stop=["<|im_end|>"])
        assert text == complete(lm.model, lm.tokenizer, [ids], params)[0].text


def test_disconnect_mid_stream_frees_the_slot(server) -> None:  # noqa: ANN001
    def gen() -> dict:
        return httpx.get(f"{server.url}/healthz").json()["generation"] or {}

    cancelled = gen().get("cancelled", 0)
    body = {
        "messages": [{"role": "user", "content": "Count from one to one hundred in words."}],
        "max_tokens": server.hub.cfg.max_new_tokens,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # the first real token: leave mid-stream
    deadline = time.time() + 60
    while (gen().get("cancelled", 0) == cancelled or gen()["rows"]) and time.time() < deadline:
        time.sleep(0.1)
    g = gen()
    assert g["cancelled"] == cancelled + 1 and g["rows"] == 0


def _raw_get(url: str, path: str) -> int:
    """GET `path` byte for byte: http.client, unlike httpx, leaves '..' segments alone."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    c.request("GET", path)
    status = c.getresponse().status
    c.close()
    return status


def test_no_path_traversal_through_static_or_source_routes(server) -> None:  # noqa: ANN001
    for path in (
        "/assets/../../hub.py",
        "/assets/%2e%2e/%2e%2e/hub.py",
        "/assets/..%2f..%2fhub.py",
        "/api/source/..%2f..%2fetc%2fpasswd",
        "/api/narration/..%2f..%2fetc%2fpasswd",
    ):
        assert _raw_get(server.url, path) == 404, path


def test_malformed_and_oversized_bodies_get_json_4xx(server) -> None:  # noqa: ANN001
    u = f"{server.url}/api/attention"
    r = httpx.post(u, content=b"{bad", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON at character 1" in r.json()["error"]["message"]
    r = httpx.post(u, content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("body: ")
    big = b'{"text": "' + b"x" * server.hub.cfg.max_body_bytes + b'"}'
    r = httpx.post(u, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]

    def chunked():  # noqa: ANN202  (no Content-Length: counted as it arrives)
        for _ in range(server.hub.cfg.max_body_bytes // 65536 + 2):
            yield b" " * 65536

    r = httpx.post(u, content=chunked(), headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and "error" in r.json()
    r = httpx.delete(f"{server.url}/healthz")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_json_mode_streams_one_parsable_object(client) -> None:  # noqa: ANN001
    chunks = list(
        client.chat.completions.create(
            model="smollm2-135m-instruct",
            temperature=0,
            max_tokens=48,
            stream=True,
            response_format={"type": "json_object"},
            messages=[{"role": "user", "content": "Give a JSON object with a key 'city'."}],
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(json.loads(text), dict)
