"""word2vec: the SGNS loss and its hand-written gradients vs the formula and torch autograd;
subsampling and the noise distribution vs gensim's own tables; window pairs vs a plain loop;
and the trained vectors vs gensim 4's Word2Vec(sg=1) on the same corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gensim.models import Word2Vec
from scipy.stats import spearmanr

from llmlab.foundations import (
    W2VConfig,
    build_vocab,
    corpus_sentences,
    keep_probability,
    load_or_train,
    noise_distribution,
    sgns_grads,
    sgns_loss,
    sgns_step,
    skipgram_pairs,
)


def _tiny() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    v_c = torch.randn(3, 4, generator=g, dtype=torch.float64)
    u_o = torch.randn(3, 4, generator=g, dtype=torch.float64)
    u_n = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    return v_c, u_o, u_n


def test_sgns_loss_is_the_formula() -> None:
    v_c, u_o, u_n = _tiny()
    v, uo, un = v_c.numpy(), u_o.numpy(), u_n.numpy()
    log_sig = lambda s: np.log(1.0 / (1.0 + np.exp(-s)))
    expected = 0.0
    for b in range(3):
        expected -= log_sig(uo[b] @ v[b])
        for k in range(2):
            expected -= log_sig(-(un[b, k] @ v[b]))
    assert sgns_loss(v_c, u_o, u_n).item() == pytest.approx(expected, rel=1e-12)
    # Stable where the naive formula overflows: scores of +-1000.
    big = sgns_loss(v_c * 0 + 10, u_o * 0 + 25, u_n * 0 - 25)  # pos 1000, neg -1000
    assert big.item() == pytest.approx(0.0, abs=1e-300)


def test_sgns_hand_gradients_match_autograd_and_formula() -> None:
    v_c, u_o, u_n = (t.clone().requires_grad_() for t in _tiny())
    loss = sgns_loss(v_c, u_o, u_n)
    loss.backward()
    l2, d_v, d_uo, d_un = sgns_grads(v_c.detach(), u_o.detach(), u_n.detach())
    assert l2.item() == pytest.approx(loss.item(), rel=1e-14)
    torch.testing.assert_close(d_v, v_c.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(d_uo, u_o.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(d_un, u_n.grad, rtol=1e-12, atol=1e-14)
    # The textbook form for one pair: dL/du_o = (sigma(u_o.v_c) - 1) v_c.
    s = 1 / (1 + np.exp(-(u_o[0] @ v_c[0]).item()))
    np.testing.assert_allclose(d_uo[0].numpy(), (s - 1) * v_c[0].detach().numpy(), rtol=1e-12)


def test_sgns_step_is_dense_sgd_with_repeated_rows() -> None:
    g = torch.Generator().manual_seed(1)
    v, u = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g,
                                                                           dtype=torch.float64)
    c, o = torch.tensor([0, 2, 0, 5]), torch.tensor([1, 1, 3, 0])  # repeats on purpose
    neg = torch.tensor([[4, 4], [3, 0], [1, 5], [2, 2]])
    vd, ud = v.clone().requires_grad_(), u.clone().requires_grad_()
    sgns_loss(vd[c], ud[o], ud[neg]).backward()
    sgns_step(v, u, c, o, neg, lr=0.1)
    torch.testing.assert_close(v, vd.detach() - 0.1 * vd.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(u, ud.detach() - 0.1 * ud.grad, rtol=1e-12, atol=1e-14)


@pytest.fixture(scope="module")
def kjv() -> list[list[str]]:
    return corpus_sentences("kjv")


def test_subsampling_and_noise_tables_match_gensim(kjv: list[list[str]]) -> None:
    m = Word2Vec(vector_size=8, min_count=5, sg=1, negative=5, sample=1e-3, workers=1, seed=0)
    m.build_vocab(kjv)
    words, counts = build_vocab(kjv, 5)
    assert set(words) == set(m.wv.index_to_key)
    idx = {w: i for i, w in enumerate(words)}
    gw = m.wv.index_to_key
    assert all(m.wv.get_vecattr(w, "count") == counts[idx[w]] for w in gw)
    keep = keep_probability(counts, 1e-3)
    theirs = np.array([m.wv.get_vecattr(w, "sample_int") for w in gw]) / 2**32
    np.testing.assert_allclose(keep[[idx[w] for w in gw]], theirs, atol=1e-9)
    assert keep[idx["the"]] < 0.2 and keep[-1] == 1.0
    # gensim's cumulative table of count^0.75, differenced back into per-word probabilities.
    mass = np.diff(np.concatenate([[0], m.cum_table])) / m.cum_table[-1]
    np.testing.assert_allclose(noise_distribution(counts)[[idx[w] for w in gw]], mass,
                               atol=1e-8)


def test_skipgram_pairs_match_a_plain_loop() -> None:
    ids = np.array([5, 6, 7, 8, 9, 1, 2, 3])
    sent = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    pairs = skipgram_pairs(ids, sent, 3, np.random.default_rng(7))
    reach = np.random.default_rng(7).integers(1, 4, len(ids))  # the same draws
    expected = [
        (ids[i], ids[j])
        for i in range(len(ids))
        for j in range(len(ids))
        if i != j and sent[i] == sent[j] and abs(i - j) <= reach[i]
    ]
    assert sorted(map(tuple, pairs.tolist())) == sorted(expected)
    assert len(skipgram_pairs(ids, sent, 1, np.random.default_rng(0))) == 2 * (4 + 2)


def _pairwise(m: np.ndarray) -> np.ndarray:
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    return (m @ m.T)[np.triu_indices(len(m), 1)]


def _overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    def top(m: np.ndarray) -> np.ndarray:
        m = m / np.linalg.norm(m, axis=1, keepdims=True)
        s = m @ m.T
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, 1)[:, :k]

    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(top(a), top(b), strict=True)]))


def test_vectors_agree_with_gensim_on_the_kjv(
    kjv: list[list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    cfg = W2VConfig(dim=50, epochs=2)
    ours = load_or_train(cfg, progress=False)
    assert list(tmp_path.glob("word2vec/kjv-*.npz"))  # cached, atomically: no temp files
    assert not [p for p in (tmp_path / "word2vec").iterdir() if p.name.startswith(".")]
    again = load_or_train(cfg)
    np.testing.assert_array_equal(again.vectors, ours.vectors)

    ref = Word2Vec(kjv, vector_size=50, window=5, min_count=5, sg=1, negative=5, sample=1e-3,
                   epochs=2, workers=2, seed=0)
    words = ours.words[50:550]  # frequent content words, past the function words
    a = np.stack([ours.vector(w).numpy() for w in words])
    b = np.stack([ref.wv[w] for w in words])
    rand = np.random.default_rng(0).uniform(-0.01, 0.01, a.shape)  # an untrained model
    rho, rho_rand = spearmanr(_pairwise(a), _pairwise(b))[0], spearmanr(_pairwise(rand),
                                                                       _pairwise(b))[0]
    ov, ov_rand = _overlap(a, b), _overlap(rand, b)
    print(f"spearman {rho:.3f} (random {rho_rand:.3f}); top-10 overlap {ov:.3f} "
          f"(random {ov_rand:.3f})")
    assert rho > 0.8 and abs(rho_rand) < 0.1
    assert ov > 0.45 and ov_rand < 0.1
    assert "silver" in [w for w, _ in ours.neighbours("gold", 5)]
