"""Foundations endpoints: results checked against the library and hand computations, every
field range-checked with a 4xx naming it, word2vec trained through the progress stream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from llmlab.foundations import SURFACES, W2VConfig
from llmlab.server import routes_vectors
from llmlab.weights.registry import cache_dir

SMALL_W2V = W2VConfig(dim=30, epochs=1, min_count=10)


@pytest.fixture(scope="module")
def http() -> Iterator[TestClient]:
    from llmlab.server.app import create_app
    from llmlab.server.hub import ServerConfig

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(routes_vectors, "W2V_CONFIG", SMALL_W2V)
        with TestClient(create_app(ServerConfig(preload=False))) as c:
            yield c


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def bad(http: TestClient, url: str, body: dict[str, Any], param: str) -> None:
    r = http.post(url, json=body)
    assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
    err = r.json()["error"]
    assert err["param"] == param, (body, err)
    assert param.split(".")[0] in err["message"]


def test_descent_first_step_is_the_gradient_step(http: TestClient) -> None:
    r = http.post("/api/foundations/descent",
                  json={"surface": "rosenbrock", "optimizer": "gd", "lr": 1e-3, "steps": 50,
                        "x0": -1.0, "y0": 1.5})
    assert r.status_code == 200, r.text
    d = r.json()
    p0 = np.array([-1.0, 1.5])
    x, y = p0
    grad = np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])  # by hand
    np.testing.assert_allclose(d["path"][1], p0 - 1e-3 * grad, rtol=1e-4)
    assert len(d["path"]) == len(d["losses"]) == 51 and not d["diverged"]
    assert d["losses"][-1] < d["losses"][0]
    boom = http.post("/api/foundations/descent",
                     json={"surface": "quadratic", "optimizer": "gd", "lr": 5, "steps": 100})
    b = boom.json()  # inf/NaN would have broken the JSON: they come back as null
    assert b["diverged"] and b["diverged_at"] == 3 and "loss" in b["reason"]
    g = http.get("/api/foundations/surface/bowl").json()
    assert len(g["grid"]["z"]) == 60 and g["minimum"] == [0.0, 0.0]
    assert g["grid"]["z"][0][0] == pytest.approx(SURFACES["bowl"].f(np.array([-5.0, -2.5])))


@pytest.mark.parametrize("body,param", [
    ({"lr": 0}, "lr"), ({"lr": 11}, "lr"), ({"momentum": 1.0}, "momentum"),
    ({"beta1": -0.1}, "beta1"), ({"beta2": 1}, "beta2"), ({"steps": 0}, "steps"),
    ({"steps": 2001}, "steps"), ({"surface": "saddle"}, "surface"),
    ({"optimizer": "rmsprop"}, "optimizer"), ({"x0": 99}, "x0"),
    ({"surface": "rosenbrock", "y0": -5}, "y0"),
])
def test_descent_ranges(http: TestClient, body: dict[str, Any], param: str) -> None:
    bad(http, "/api/foundations/descent", body, param)
    assert http.get("/api/foundations/surface/saddle").status_code == 404


def test_nn_train_streams_a_learning_boundary(http: TestClient) -> None:
    r = http.post("/api/foundations/nn/train",
                  json={"dataset": "moons", "n": 200, "noise": 0.1, "hidden": [16, 16],
                        "steps": 600, "lr": 0.03, "grid": 20})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    evs = sse(r.text)
    assert evs[0][0] == "data" and evs[-1][0] == "done"
    data = evs[0][1]
    assert len(data["train"]) == 100 and len(data["test"]) == 100
    assert data["params"] == 2 * 16 + 16 + 16 * 16 + 16 + 16 * 2 + 2
    steps = [d for e, d in evs if e == "step"]
    assert steps[0]["step"] == 0 and steps[-1]["step"] == 600 and len(steps) > 10
    assert steps[-1]["test_acc"] >= 0.95 > steps[0]["test_acc"]
    grid = np.array(steps[-1]["grid"])
    assert grid.shape == (20, 20) and (grid >= 0).all() and (grid <= 1).all()


@pytest.mark.parametrize("body,param", [
    ({"hidden": [0]}, "hidden.0"), ({"hidden": [8, 65]}, "hidden.1"),
    ({"hidden": [4] * 7}, "hidden"), ({"dropout": 0.95}, "dropout"), ({"n": 5}, "n"),
    ({"noise": 0.9}, "noise"), ({"lr": 0}, "lr"), ({"steps": 6000}, "steps"),
    ({"grid": 200}, "grid"), ({"dataset": "swiss"}, "dataset"),
    ({"activation": "gelu"}, "activation"), ({"n": 40, "batch_size": 30}, "batch_size"),
])
def test_nn_ranges(http: TestClient, body: dict[str, Any], param: str) -> None:
    bad(http, "/api/foundations/nn/train", body, param)


def test_dropout_comparison(http: TestClient) -> None:
    d = http.post("/api/foundations/nn/dropout", json={"p": 0.3, "steps": 800}).json()
    assert [r["dropout"] for r in d["runs"]] == [0.0, 0.3]
    assert all(len(r["grid"]) == 40 for r in d["runs"])
    bad(http, "/api/foundations/nn/dropout", {"p": 0}, "p")
    bad(http, "/api/foundations/nn/dropout", {"steps": 10}, "steps")


def test_overfit(http: TestClient) -> None:
    lo = http.post("/api/foundations/overfit", json={"degree": 3, "n_train": 20}).json()
    hi = http.post("/api/foundations/overfit", json={"degree": 20, "n_train": 20}).json()
    ridge = http.post("/api/foundations/overfit",
                      json={"degree": 20, "n_train": 20, "lam": 0.1}).json()
    assert hi["train_mse"] < 1e-10 < lo["train_mse"]  # 21 coefficients through 20 points
    assert hi["val_mse"] > 100 * lo["val_mse"] and ridge["val_mse"] < hi["val_mse"] / 100
    assert len(hi["by_degree"]["val"]) == 21 and hi["by_degree"]["val"][20] == hi["val_mse"]
    for body, param in [({"degree": 21}, "degree"), ({"lam": -1}, "lam"),
                        ({"lam": 1e4}, "lam"), ({"n_train": 4}, "n_train"),
                        ({"noise": 2}, "noise"), ({"seed": -1}, "seed")]:
        bad(http, "/api/foundations/overfit", body, param)


def test_word2vec_trains_through_the_stream_then_answers(http: TestClient) -> None:
    path = cache_dir() / "word2vec" / f"kjv-{SMALL_W2V.key()}.npz"
    path.unlink(missing_ok=True)  # train for real, through the page's stream
    r = http.post("/api/foundations/vectors/neighbours", json={"word": "gold"})
    assert r.status_code == 409 and r.json()["error"]["param"] == "space"
    evs = sse(http.post("/api/foundations/word2vec/train").text)
    assert evs[-1][0] == "done" and evs[-1][1]["ready"], evs[-1]
    assert any(e == "progress" and 0 < d["progress"] <= 1 for e, d in evs)
    assert evs[-1][1]["config"]["dim"] == 30 and path.exists()

    from llmlab.foundations import load_or_train

    wv = load_or_train(SMALL_W2V)
    nn = http.post("/api/foundations/vectors/neighbours", json={"word": "Gold", "k": 5}).json()
    assert [(n["word"], pytest.approx(n["cos"])) for n in nn["neighbours"]] == \
        [(w, pytest.approx(c)) for w, c in wv.neighbours("gold", 5)]
    an = http.post("/api/foundations/vectors/analogy",
                   json={"a": "man", "b": "king", "c": "woman"}).json()
    assert [x["word"] for x in an["results"]] == [w for w, _ in wv.analogy("man", "king",
                                                                           "woman")]
    pr = http.post("/api/foundations/vectors/projection",
                   json={"words": ["king", "queen", "man", "woman"]}).json()
    assert len(pr["points"]) == 4 and len(pr["explained"]) == 2
    bad(http, "/api/foundations/vectors/neighbours", {"word": "xyzzy"}, "word")
    bad(http, "/api/foundations/vectors/neighbours", {"word": "gold", "k": 0}, "k")
    bad(http, "/api/foundations/vectors/neighbours", {"word": ""}, "word")
    bad(http, "/api/foundations/vectors/neighbours", {"word": "a", "space": "glove"}, "space")
    bad(http, "/api/foundations/vectors/analogy", {"a": "man", "b": "king", "c": "qwxz"}, "c")
    bad(http, "/api/foundations/vectors/projection", {"words": ["king", "qwxz"]}, "words.1")
    bad(http, "/api/foundations/vectors/projection", {"words": ["king"]}, "words")


def test_smollm2_token_space(http: TestClient) -> None:
    an = http.post("/api/foundations/vectors/analogy",
                   json={"space": "smollm2", "a": "man", "b": "king", "c": "woman"}).json()
    assert an["tokens"] == ["Ġman", "Ġking", "Ġwoman"]
    assert an["results"][0]["word"] == "queen"
    r = http.post("/api/foundations/vectors/neighbours", json={"space": "smollm2",
                                                                "word": "paris"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "word"
    assert "'Paris' is one" in r.json()["error"]["message"]


def test_sources_and_narration(http: TestClient) -> None:
    for key, name in [("foundations.backward", "def backward"), ("foundations.adam", "def step"),
                      ("foundations.ridge", "def fit_ridge"), ("foundations.sgns", "def sgns")]:
        assert name in http.get(f"/api/source/{key}").json()["source"]
    for page in ("descent", "neuralnet", "overfit", "word2vec"):
        text = http.get(f"/api/narration/{page}").json()["text"]
        assert 2 <= text.count(". ") + 1 <= 6
