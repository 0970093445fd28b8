"""Polynomial fits: our Legendre basis vs numpy's, ridge vs sklearn's Ridge and the normal
equations, plain least squares vs numpy's legfit, and the under/overfitting shape."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.polynomial import legendre as L
from sklearn.linear_model import Ridge

from llmlab.foundations import (
    degree_sweep,
    fit_ridge,
    legendre_features,
    poly_fit,
    ridge_sweep,
    sine_data,
)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, ...]:
    return (*sine_data(20, 0.25, seed=0), *sine_data(200, 0.25, seed=1))


def test_legendre_features_match_numpy() -> None:
    x = np.linspace(0, 1, 37)
    for deg in (0, 1, 2, 7, 20):
        np.testing.assert_allclose(legendre_features(x, deg), L.legvander(2 * x - 1, deg),
                                   rtol=1e-12, atol=1e-12)


def test_degree_20_basis_is_well_conditioned(data: tuple[np.ndarray, ...]) -> None:
    x = data[0]
    assert np.linalg.cond(legendre_features(x, 20)) < 1e8
    assert np.linalg.cond(np.vander(x, 21)) > 1e15  # what monomials would have given


def test_no_penalty_is_numpy_legfit(data: tuple[np.ndarray, ...]) -> None:
    x, y = data[2], data[3]  # 200 points: an overdetermined fit
    for deg in (1, 4, 12):
        w = fit_ridge(legendre_features(x, deg), y, 0.0)
        np.testing.assert_allclose(w, L.legfit(2 * x - 1, y, deg), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("deg,lam", [(4, 1e-3), (9, 0.1), (20, 1e-4), (20, 10.0)])
def test_ridge_matches_sklearn_with_unpenalised_intercept(data: tuple[np.ndarray, ...],
                                                          deg: int, lam: float) -> None:
    x, y = data[0], data[1]
    phi = legendre_features(x, deg)
    w = fit_ridge(phi, y, lam)
    # The constant column P_0 = 1 plays sklearn's (unpenalised) intercept.
    ref = Ridge(alpha=lam, fit_intercept=True, solver="svd").fit(phi[:, 1:], y)
    np.testing.assert_allclose(w[1:], ref.coef_, rtol=1e-6, atol=1e-8)
    assert w[0] == pytest.approx(ref.intercept_, abs=1e-8)


def test_ridge_matches_the_normal_equations(data: tuple[np.ndarray, ...]) -> None:
    x, y = data[0], data[1]
    phi = legendre_features(x, 6)
    d = np.eye(7)
    d[0, 0] = 0
    for lam in (0.0, 0.01, 1.0):
        closed = np.linalg.solve(phi.T @ phi + lam * d, phi.T @ y)
        np.testing.assert_allclose(fit_ridge(phi, y, lam), closed, rtol=1e-7, atol=1e-9)


def test_under_and_overfitting(data: tuple[np.ndarray, ...]) -> None:
    xt, yt, xv, yv = data
    sweep = degree_sweep(xt, yt, xv, yv, max_degree=20)
    train, val = np.array(sweep["train"]), np.array(sweep["val"])
    # Nested least-squares models: training error never rises with the degree.
    assert (np.diff(train) <= 1e-12).all()
    assert train[20] < 1e-12  # 21 coefficients, 20 points: it interpolates
    best = int(np.argmin(val))
    assert 3 <= best <= 8  # a sine needs about a cubic
    assert val[1] > 2 * val[best] and val[20] > 100 * val[best]  # under- and overfit
    # The penalty tames degree 20: validation error drops by orders of magnitude.
    rs = ridge_sweep(xt, yt, xv, yv, 20, np.array([0.0, 1e-3, 0.1]))
    assert rs["val"][2] < rs["val"][0] / 100
    assert rs["train"][0] < rs["train"][1] < rs["train"][2]
    f0, f1 = poly_fit(xt, yt, xv, yv, 20, 0.0), poly_fit(xt, yt, xv, yv, 20, 0.1)
    assert f1.weight_norm < f0.weight_norm / 10
    assert len(f1.curve_x) == len(f1.curve_y) == 200


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="degree"):
        legendre_features(np.zeros(3), -1)
    with pytest.raises(ValueError, match="lam"):
        fit_ridge(np.ones((3, 2)), np.ones(3), -1.0)
    with pytest.raises(ValueError, match="n must"):
        sine_data(0)
