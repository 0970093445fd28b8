"""POST /api/sft/mask: the trained tokens are transformers' assistant-token mask, the packed
rows are `pack`'s, and bad input is a 400 naming the field."""

from __future__ import annotations

import types
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sft_mask_refs import hf_assistant_mask

MSGS = [{"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome, since 1871."}]


@pytest.fixture(scope="module")
def http() -> Iterator[TestClient]:
    from llmlab.server.app import create_app
    from llmlab.server.hub import ServerConfig
    from llmlab.tokenizer import load_tokenizer

    app = create_app(ServerConfig(preload=False))
    # The route reads only the chat model's tokenizer: SmolLM2's, without loading its weights.
    app.state.hub._models.update(lm=types.SimpleNamespace(tokenizer=load_tokenizer("smollm2")))
    with TestClient(app) as c:
        yield c


def test_mask_equals_transformers_and_packs(http: TestClient) -> None:
    r = http.post("/api/sft/mask", json={"messages": MSGS, "template": "chatml",
                                         "system": "Be brief.", "seq_len": 128,
                                         "pack_examples": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    ids, mask = hf_assistant_mask([{"role": "system", "content": "Be brief."}, *MSGS])
    assert [t["id"] for t in body["tokens"]] == ids
    assert [int(t["trained"]) for t in body["tokens"]] == mask
    assert body["n_trained"] == sum(mask) and body["n_tokens"] == len(ids)
    p = body["packing"]
    assert p["n_examples"] == 4 and all(len(row["tokens"]) == 128 for row in p["rows"])
    assert len(p["mask"]) == 128 and p["mask"][0][0] == 1 and p["mask"][0][1] == 0
    assert {"sft.encode_chat", "sft.pack", "sft.doc_mask"} <= set(body["sources"])


@pytest.mark.parametrize(("patch", "param"), [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}, *MSGS]}, "messages[0].role"),
    ({"template": "vicuna"}, "template"),
    ({"template": "../../etc/passwd"}, "template"),
    ({"seq_len": 32, "pack_examples": 2}, "seq_len"),  # a trivia example has no answer in 32
])
def test_bad_request_is_400_naming_the_field(http: TestClient, patch: dict, param: str) -> None:
    r = http.post("/api/sft/mask", json={"messages": MSGS, "template": "chatml", **patch})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"].startswith(param + ":")


@pytest.mark.parametrize("patch", [{"seq_len": 8}, {"seq_len": 4096}, {"pack_examples": 9}])
def test_out_of_range_numbers_are_refused(http: TestClient, patch: dict) -> None:
    r = http.post("/api/sft/mask", json={"messages": MSGS, **patch})
    assert r.status_code == 422 and r.json()["error"]["param"] == next(iter(patch))
