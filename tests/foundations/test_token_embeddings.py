"""SmolLM2's token embeddings: candidates, token strings and lengths vs transformers' own
tokenizer built from the same GGUF; neighbours and analogies vs a NumPy brute force."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from llmlab.foundations import TokenSpace


@pytest.fixture(scope="module")
def space() -> TokenSpace:
    return TokenSpace.load()


@pytest.fixture(scope="module")
def hf_tok() -> Any:
    import transformers

    from llmlab.weights.registry import _smollm2_file

    p = _smollm2_file()
    return transformers.AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)


def _unit(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=-1, keepdims=True)


def test_candidates_and_token_strings_match_transformers(space: TokenSpace, hf_tok: Any) -> None:
    vocab = hf_tok.get_vocab()
    whole = {i for t, i in vocab.items() if re.fullmatch(r"Ġ[A-Za-z]{2,}", t)}
    assert set(space.ids) == whole and len(whole) > 20000
    for word in ("king", "queen", "Paris", "dog"):
        ids = hf_tok.encode(" " + word, add_special_tokens=False)
        d = space.describe(word)
        assert [d["id"]] == ids
        assert d["token"] == hf_tok.convert_ids_to_tokens(ids[0]) == "Ġ" + word
    word = "antidisestablishmentarianism"
    n = len(hf_tok.encode(" " + word, add_special_tokens=False))
    with pytest.raises(ValueError, match=f"is {n} SmolLM2 tokens"):
        space.vector(word)
    with pytest.raises(ValueError, match="'Paris' is one"):
        space.vector("paris")


def test_neighbours_and_analogy_match_numpy(space: TokenSpace, hf_tok: Any) -> None:
    emb = space.embedding.numpy().astype(np.float64)
    vocab = hf_tok.get_vocab()
    cand = sorted(i for t, i in vocab.items() if re.fullmatch(r"Ġ[A-Za-z]{2,}", t))
    names = [hf_tok.convert_ids_to_tokens(i)[1:] for i in cand]
    table = _unit(emb[cand])
    rid = {w: vocab["Ġ" + w] for w in ("king", "man", "woman")}

    sims = table @ _unit(emb[rid["king"]])
    order = [i for i in np.argsort(-sims) if names[i] != "king"][:8]
    got = space.neighbours("king", 8)
    assert [w for w, _ in got] == [names[i] for i in order]
    np.testing.assert_allclose([c for _, c in got], sims[order], rtol=1e-5)

    target = _unit(emb[rid["king"]]) - _unit(emb[rid["man"]]) + _unit(emb[rid["woman"]])
    sims = table @ _unit(target)
    order = [i for i in np.argsort(-sims) if names[i] not in rid][:5]
    got = space.analogy("man", "king", "woman", 5)
    assert [w for w, _ in got] == [names[i] for i in order]
    assert "queen" in [w for w, _ in got[:3]]  # a real model's embedding table encodes it


def test_projection_is_pca_of_unit_vectors(space: TokenSpace) -> None:
    words = ["king", "queen", "man", "woman", "prince", "princess"]
    out = space.project(words)
    x = _unit(np.stack([space.vector(w).numpy() for w in words]).astype(np.float64))
    xc = x - x.mean(0)
    s = np.linalg.svd(xc, compute_uv=False)
    pts = np.array(out["points"])
    # PCA coordinates keep the variance along each principal axis (signs are a convention).
    np.testing.assert_allclose((pts**2).sum(0), s[:2] ** 2, rtol=1e-6)
    np.testing.assert_allclose(out["explained"], s[:2] ** 2 / (s**2).sum(), rtol=1e-6)
