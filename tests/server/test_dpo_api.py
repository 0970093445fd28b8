"""The DPO page's API: each completion token's log π is transformers' on the HF export of
SmolLM2 (π = π_ref for the untrained policy), the losses are the library's at any β, and bad
requests are 4xx naming the field. (Loss = TRL's: tests/test_align_explain_dpo.py.)"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from next_token_ref import hf_export, hf_scores

PAIR = {"prompt": "Mia has 9 shells. Ben gives Mia 4 more. How many shells does Mia have now?",
        "chosen": "9 + 4 = 13. The answer is 13.", "rejected": "The answer is 12."}


@pytest.fixture(scope="module")
def http(lm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from llmlab.server.app import create_app
    from llmlab.server.hub import ServerConfig

    app = create_app(ServerConfig(preload=False, runs_dir=str(tmp_path_factory.mktemp("r"))))
    app.state.hub._models.update(lm=lm)
    with TestClient(app) as c:
        yield c


def test_token_logprobs_are_transformers_and_sum_to_the_sequence(http: TestClient, lm: Any,
                                                                 tmp_path) -> None:  # noqa: ANN001
    from llmlab.align.data import completion_ids, prompt_ids
    from llmlab.generate.chat import template_for

    r = http.post("/api/dpo/pair", json={**PAIR, "model": "smollm2", "beta": 0.25})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["same_model"] and "dpo.loss" in body["sources"]
    ref = hf_export(lm, tmp_path / "hf")
    tpl = template_for(lm)
    p = prompt_ids(lm.tokenizer, tpl, PAIR["prompt"])
    for side in ("chosen", "rejected"):
        s = body[side]
        c = completion_ids(lm.tokenizer, tpl, PAIR[side])
        assert s["ids"] == c and s["n_tokens"] == len(c)  # the text, then <|im_end|>
        assert "".join(s["pieces"][:-1]) == PAIR[side]
        _, nll, _ = hf_scores(ref, p + c)
        want = (-nll[len(p) - 1:]).tolist()
        assert s["logp"] == pytest.approx(want, abs=2e-3)
        assert s["logp_ref"] == s["logp"] and set(s["logratio"]) == {0.0}
        assert sum(s["logp"]) == pytest.approx(s["seq_logp"], abs=1e-3)
        assert s["seq_logp"] == pytest.approx(sum(want), abs=2e-2)
    # π = π_ref: zero rewards, the sigmoid loss is log 2, the hinge loss 1
    assert body["beta"] == 0.25
    assert body["losses"]["sigmoid"]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert body["losses"]["hinge"]["loss"] == pytest.approx(1.0, abs=1e-6)
    assert body["losses"]["ipo"]["loss"] == pytest.approx((1 / 0.5) ** 2, abs=1e-5)


def test_loss_endpoint_at_any_beta(http: TestClient) -> None:
    q = {"logp_chosen": -20.0, "logp_rejected": -25.0, "ref_logp_chosen": -22.0,
         "ref_logp_rejected": -24.0, "len_chosen": 10, "len_rejected": 8}
    z = (-20 + 25) - (-22 + 24)
    for beta in (0.01, 0.3, 7.0):
        b = http.post("/api/dpo/loss", json={**q, "beta": beta}).json()
        assert b["logits"] == pytest.approx(z)
        assert b["losses"]["sigmoid"]["loss"] == pytest.approx(math.log1p(math.exp(-beta * z)),
                                                               rel=1e-5)
        assert b["losses"]["hinge"]["loss"] == pytest.approx(max(0, 1 - beta * z), abs=1e-5)
        assert b["losses"]["sigmoid"]["rewards/chosen"] == pytest.approx(beta * 2, rel=1e-5)
        assert b["losses"]["sigmoid"]["rewards/rejected"] == pytest.approx(-beta, rel=1e-5)
        assert len(b["curve"]["beta"]) == len(b["curve"]["ipo"]) == 61


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/api/dpo/pair", {**PAIR, "beta": 0}, "beta"),
    ("/api/dpo/pair", {**PAIR, "prompt": ""}, "prompt"),
    ("/api/dpo/pair", {**PAIR, "chosen": "   "}, "chosen"),
    ("/api/dpo/pair", {**PAIR, "model": "gpt-9"}, "model"),
    ("/api/dpo/pair", {**PAIR, "model": "run:nosuchrun"}, "model"),
    ("/api/dpo/pair", {**PAIR, "model": "run:x@last"}, "model"),
    ("/api/dpo/loss", {"logp_chosen": -1, "logp_rejected": -1, "ref_logp_chosen": -1,
                       "ref_logp_rejected": -1, "len_chosen": 0, "len_rejected": 1,
                       "beta": 0.1}, "len_chosen"),
    ("/api/dpo/loss", {"logp_chosen": 3, "logp_rejected": -1, "ref_logp_chosen": -1,
                       "ref_logp_rejected": -1, "len_chosen": 1, "len_rejected": 1,
                       "beta": 0.1}, "logp_chosen"),
])
def test_bad_requests_name_the_field(http: TestClient, path: str, body: dict, param: str) -> None:
    r = http.post(path, json=body)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["param"] == param and param in err["message"], err


def test_bad_task_names_the_field(http: TestClient) -> None:
    r = http.get("/api/dpo/pairs", params={"task": "chess-prefs"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "task"
