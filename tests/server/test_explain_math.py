"""The playground's maths against outside references: numpy SVD, scikit-learn PCA,
transformers' BERT attentions, PEFT's trainable-parameter counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmlab.explain.projection import fit_pca
from llmlab.explain.spectrum import low_rank, rank_r_errors, singular_values


def test_eckart_young_matches_numpy_reconstruction() -> None:
    rng = np.random.default_rng(0)
    w = (
        rng.standard_normal((40, 25))
        @ np.diag(np.linspace(3, 0.1, 25))
        @ rng.standard_normal((25, 25))
    )
    u, s, vh = np.linalg.svd(w, full_matrices=False)
    errs = rank_r_errors(singular_values(torch.tensor(w))).numpy()
    assert errs.shape == (26,)
    for r in (0, 1, 5, 12, 25):
        wr = (u[:, :r] * s[:r]) @ vh[:r]
        ref = np.linalg.norm(w - wr) / np.linalg.norm(w)
        assert errs[r] == pytest.approx(ref, abs=1e-9)
        assert np.allclose(low_rank(torch.tensor(w), r).numpy(), wr, atol=1e-9)


def test_spectrum_of_real_smollm2_weight(lm) -> None:  # noqa: ANN001
    w = lm.model.model.layers[3].self_attn.q_proj.weight.detach()
    s = singular_values(w).numpy()
    ref = np.linalg.svd(w.double().numpy(), compute_uv=False)
    assert np.allclose(s, ref, rtol=1e-8, atol=1e-8)


def test_pca_matches_sklearn() -> None:
    from sklearn import decomposition as sk
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 8)) * np.arange(8, 0, -1)
    q = rng.standard_normal((2, 8))
    ours = fit_pca(torch.tensor(x))
    ref = sk.PCA(n_components=2).fit(x)
    assert np.allclose(ours.explained.numpy(), ref.explained_variance_ratio_, atol=1e-10)
    # Axes agree up to sign; compare projections axis by axis with the sign aligned.
    a, b = ours.transform(torch.tensor(q)).numpy(), ref.transform(q)
    for k in range(2):
        sign = np.sign(a[0, k] * b[0, k]) or 1.0
        assert np.allclose(a[:, k], sign * b[:, k], atol=1e-9)


def test_minilm_attention_matches_transformers(enc) -> None:  # noqa: ANN001
    import transformers

    from llmlab.explain.attention import run_attention, softmax_with_temperature
    from llmlab.weights.registry import REGISTRY

    ref = transformers.BertModel.from_pretrained(
        str(REGISTRY["minilm-l6-v2"].find()), attn_implementation="eager"
    ).eval()
    text = "The cat sat on the mat."
    run = run_attention(enc, text)
    with torch.no_grad():
        out = ref(torch.tensor([run.ids]), output_attentions=True)
    theirs = torch.stack([a[0] for a in out.attentions])
    assert torch.allclose(run.weights, theirs, atol=1e-5)
    assert torch.allclose(softmax_with_temperature(run.scores, 1.0), run.weights, atol=1e-6)


def test_bidirectional_really_recomputes_and_restores(lm) -> None:  # noqa: ANN001
    from llmlab.explain.attention import attention_operations, run_attention

    causal = run_attention(lm, "one two three four")
    bi = run_attention(lm, "one two three four", causal=False)
    assert lm.model.model.causal is True  # the shared model is restored
    n = len(causal.ids)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
    assert (causal.weights[..., upper] == 0).all()
    assert (bi.weights[..., upper] > 0).all()
    # Layer 0 row 0 sees only itself causally; bidirectionally every layer differs.
    assert not torch.allclose(causal.weights[-1], bi.weights[-1])
    assert attention_operations(n, 9, 30) == n * n * 9 * 30


def test_temperature_sharpens() -> None:
    from llmlab.explain.attention import softmax_with_temperature

    s = torch.tensor([[1.0, 2.0, float("-inf")]])
    cold, hot = softmax_with_temperature(s, 0.1), softmax_with_temperature(s, 10.0)
    assert cold[0, 1] > hot[0, 1] and cold[0, 2] == 0 and hot[0, 2] == 0
    assert cold.sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="temperature"):
        softmax_with_temperature(s, 0.0)


def test_rope_panel_matches_model_positions() -> None:
    from llmlab.explain.positions import rope_panel

    p = rope_panel(10, 64, 100000.0)
    # Pair 0 rotates by exactly 1 radian per position (theta^0 = 1).
    assert p["angles"][3, 0].item() == pytest.approx(3.0)
    assert p["wavelength"][0].item() == pytest.approx(2 * math.pi, rel=1e-6)
