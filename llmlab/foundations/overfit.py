"""Under- and overfitting: least-squares polynomial fits of noisy sin(2πx), with a ridge
penalty.

The polynomial is written in the Legendre basis on [-1, 1] rather than in powers of x:
powers 0..20 on [0, 1] are nearly parallel vectors (the Vandermonde matrix has a condition
number around 1e16, all precision gone), whereas Legendre polynomials are orthogonal, so a
degree-20 fit stays numerically sane and only the *statistics* go wrong."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Array = np.ndarray


def sine_data(n: int, noise: float = 0.25, seed: int = 0) -> tuple[Array, Array]:
    """n points x ~ U[0, 1], y = sin(2πx) + N(0, noise²)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0.0, 1.0, n))
    return x, np.sin(2 * np.pi * x) + rng.normal(0.0, noise, n)


def legendre_features(x: Array, degree: int) -> Array:
    """Columns P_0(t) .. P_degree(t) at t = 2x - 1, by Bonnet's recurrence
    (k + 1) P_{k+1} = (2k + 1) t P_k - k P_{k-1}."""
    if degree < 0:
        raise ValueError(f"degree must be >= 0, got {degree}")
    t = 2.0 * np.asarray(x, dtype=np.float64) - 1.0
    cols = [np.ones_like(t), t]
    for k in range(1, degree):
        cols.append(((2 * k + 1) * t * cols[k] - k * cols[k - 1]) / (k + 1))
    return np.stack(cols[: degree + 1], axis=1)


def fit_ridge(phi: Array, y: Array, lam: float) -> Array:
    """argmin_w ||y - phi w||² + lam ||w[1:]||²: the constant column is not penalised, so
    the penalty shrinks the shape of the curve, not its level.

    Solved as least squares on the stacked system [phi; sqrt(lam) D] w = [y; 0], which
    avoids forming phiᵀphi (that would square the condition number). With lam = 0 and more
    columns than points, lstsq returns the minimum-norm interpolant."""
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    p = phi.shape[1]
    d = np.sqrt(lam) * np.eye(p)[1:]
    a = np.vstack([phi, d])
    b = np.concatenate([y, np.zeros(p - 1)])
    return np.linalg.lstsq(a, b, rcond=None)[0]


def mse(phi: Array, w: Array, y: Array) -> float:
    return float(np.mean((phi @ w - y) ** 2))


@dataclass
class PolyFit:
    degree: int
    lam: float
    coef: Array  # Legendre coefficients
    train_mse: float
    val_mse: float
    curve_x: Array
    curve_y: Array

    @property
    def weight_norm(self) -> float:
        return float(np.linalg.norm(self.coef[1:]))


def poly_fit(
    x_train: Array, y_train: Array, x_val: Array, y_val: Array, degree: int, lam: float = 0.0,
    n_curve: int = 200,
) -> PolyFit:
    """Fit a degree-`degree` polynomial with ridge penalty `lam`; errors on both sets and
    the fitted curve on a grid over [0, 1]."""
    w = fit_ridge(legendre_features(x_train, degree), y_train, lam)
    cx = np.linspace(0.0, 1.0, n_curve)
    return PolyFit(
        degree, lam, w,
        mse(legendre_features(x_train, degree), w, y_train),
        mse(legendre_features(x_val, degree), w, y_val),
        cx, legendre_features(cx, degree) @ w,
    )


def degree_sweep(x_train: Array, y_train: Array, x_val: Array, y_val: Array,
                 max_degree: int = 20, lam: float = 0.0) -> dict[str, list[float]]:
    """Train and validation MSE for every degree 0..max_degree: the U-shaped curve."""
    fits = [poly_fit(x_train, y_train, x_val, y_val, d, lam, 2) for d in range(max_degree + 1)]
    return {
        "degree": list(range(max_degree + 1)),
        "train": [f.train_mse for f in fits],
        "val": [f.val_mse for f in fits],
    }


def ridge_sweep(x_train: Array, y_train: Array, x_val: Array, y_val: Array, degree: int,
                lams: Array) -> dict[str, list[float]]:
    """Train and validation MSE as the penalty grows, at a fixed degree."""
    fits = [poly_fit(x_train, y_train, x_val, y_val, degree, float(lam), 2) for lam in lams]
    return {
        "lam": [float(v) for v in lams],
        "train": [f.train_mse for f in fits],
        "val": [f.val_mse for f in fits],
    }
