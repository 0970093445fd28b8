"""The Decoding page's distribution against transformers' own logits warpers (temperature,
top-k, top-p in `generate`'s order) applied to the same next-token logits, and its
step-by-step sampling against torch.multinomial with the same seed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def http(lm: Any) -> Iterator[TestClient]:
    from llmlab.server.app import create_app
    from llmlab.server.hub import ServerConfig

    app = create_app(ServerConfig(preload=False))
    app.state.hub._models.update(lm=lm)  # the session's SmolLM2: one copy in memory
    with TestClient(app) as c:
        yield c


def _hf_probs(lm: Any, ids: list[int], t: float, k: int, p: float) -> torch.Tensor:
    with torch.inference_mode():
        logits = lm.model(torch.tensor([ids]), last_only=True).logits[:, -1].float()
    x = torch.tensor([ids])
    for w in (TemperatureLogitsWarper(t), TopKLogitsWarper(k), TopPLogitsWarper(p)):
        logits = w(x, logits)
    return logits.softmax(-1)[0]


@pytest.mark.parametrize(("t", "k", "p"), [(0.7, 50, 0.9), (1.5, 5, 1.0), (1.0, 0, 0.5)])
def test_processed_distribution_matches_transformers(http: TestClient, lm: Any, t: float,
                                                     k: int, p: float) -> None:
    body = {"text": PROMPT, "temperature": t, "top_k": k, "top_p": p, "k": 30}
    r = http.post("/api/decode/next", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    ids = lm.tokenizer.encode(PROMPT)
    want = _hf_probs(lm, ids, t, k or lm.cfg.vocab_size, p)
    assert out["kept"] == int((want > 0).sum())
    for tok in out["top"]:
        assert tok["p"] == pytest.approx(float(want[tok["id"]]), abs=1e-5), tok


def test_step_by_step_sampling_appends_the_seeded_draw(http: TestClient, lm: Any) -> None:
    ids = lm.tokenizer.encode(PROMPT)
    appended: list[int] = []
    for seed in (1, 2, 3):
        body = {"text": PROMPT, "append_ids": appended, "temperature": 0.8, "top_k": 20,
                "seed": seed}
        out = http.post("/api/decode/next", json=body).json()
        probs = _hf_probs(lm, ids + appended, 0.8, 20, 1.0)
        g = torch.Generator().manual_seed(seed)
        assert out["sampled"]["id"] == int(torch.multinomial(probs, 1, generator=g))
        appended.append(out["sampled"]["id"])
    out = http.post("/api/decode/next", json={"text": PROMPT, "append_ids": appended}).json()
    assert out["generated"] == lm.tokenizer.decode(appended)
    assert out["n_prompt_tokens"] == len(ids) + 3
