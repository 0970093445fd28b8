"""Two-class toy sets in the plane (moons, spirals, circles, xor), scaled to about [-1, 1]²,
and a classifier's probability on a grid: the decision boundary the playground paints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Array = np.ndarray
BOUNDS = (-1.5, 1.5)  # the square every set fits in, with a margin, for drawing


def _moons(n: int, rng: np.random.Generator) -> tuple[Array, Array]:
    n0 = n // 2
    t0, t1 = rng.uniform(0, np.pi, n0), rng.uniform(0, np.pi, n - n0)
    upper = np.stack([np.cos(t0), np.sin(t0)], 1)
    lower = np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], 1)
    x = (np.concatenate([upper, lower]) - [0.5, 0.25]) * 0.75
    return x, np.repeat([0, 1], [n0, n - n0])


def _spirals(n: int, rng: np.random.Generator) -> tuple[Array, Array]:
    n0 = n // 2
    y = np.repeat([0, 1], [n0, n - n0])
    r = rng.uniform(0.05, 1.0, n)
    theta = 1.75 * 2 * np.pi * r + np.pi * y  # two arms, half a turn apart
    return np.stack([r * np.cos(theta), r * np.sin(theta)], 1) * 1.1, y


def _circles(n: int, rng: np.random.Generator) -> tuple[Array, Array]:
    n0 = n // 2
    y = np.repeat([0, 1], [n0, n - n0])
    r = np.where(y == 0, rng.uniform(0.0, 0.45, n), rng.uniform(0.75, 1.1, n))
    theta = rng.uniform(0, 2 * np.pi, n)
    return np.stack([r * np.cos(theta), r * np.sin(theta)], 1), y


def _xor(n: int, rng: np.random.Generator) -> tuple[Array, Array]:
    x = rng.uniform(-1.1, 1.1, (n, 2))
    x += np.sign(x) * 0.05  # a small gap around the axes
    return x, (x[:, 0] * x[:, 1] < 0).astype(int)


SETS: dict[str, Callable[[int, np.random.Generator], tuple[Array, Array]]] = {
    "moons": _moons,
    "spirals": _spirals,
    "circles": _circles,
    "xor": _xor,
}


@dataclass
class ToySet:
    name: str
    x_train: Array
    y_train: Array
    x_test: Array
    y_test: Array


def make_toy(name: str, n: int = 200, noise: float = 0.1, seed: int = 0,
             test_fraction: float = 0.5) -> ToySet:
    """n points of set `name` with Gaussian noise (std `noise`) on each coordinate, shuffled
    and split into train and test."""
    if name not in SETS:
        raise ValueError(f"dataset must be one of {sorted(SETS)}, got {name!r}")
    if n < 4:
        raise ValueError(f"n must be >= 4, got {n}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    x, y = SETS[name](n, rng)
    x = x + rng.normal(0.0, noise, x.shape)
    order = rng.permutation(n)
    x, y = x[order], y[order]
    k = max(1, min(n - 1, round(n * (1 - test_fraction))))
    return ToySet(name, x[:k], y[:k], x[k:], y[k:])


def decision_grid(predict_proba: Callable[[Array], Array], n: int = 40,
                  bounds: tuple[float, float] = BOUNDS) -> Array:
    """P(class 1) at the centres of an n x n grid over bounds² (rows along y, bottom first)."""
    step = (bounds[1] - bounds[0]) / n
    c = bounds[0] + step * (np.arange(n) + 0.5)
    gx, gy = np.meshgrid(c, c)
    p = predict_proba(np.stack([gx.ravel(), gy.ravel()], 1))
    return p[:, 1].reshape(n, n)
