"""Gradient descent on small loss surfaces: plain GD, momentum and Adam, step by step.

The optimizers update a list of NumPy arrays in place with exactly the rules of
`torch.optim.SGD` (momentum, no dampening) and `torch.optim.Adam`, so the same classes also
train the NumPy network in `numpy_nn`. A run records every position and loss, and says
when (and why) it diverged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Array = np.ndarray


class SGD:
    """p <- p - lr * b, with b <- momentum * b + g (b = g on the first step), as torch's SGD."""

    def __init__(self, lr: float, momentum: float = 0.0) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.lr, self.momentum = lr, momentum
        self.buf: list[Array] | None = None

    def step(self, params: list[Array], grads: list[Array]) -> None:
        if self.momentum == 0:
            for p, g in zip(params, grads, strict=True):
                p -= self.lr * g
            return
        if self.buf is None:
            self.buf = [g.copy() for g in grads]
        else:
            for b, g in zip(self.buf, grads, strict=True):
                b *= self.momentum
                b += g
        for p, b in zip(params, self.buf, strict=True):
            p -= self.lr * b


class Adam:
    """Adam (Kingma & Ba 2015): a step of lr * m_hat / (sqrt(v_hat) + eps), where m and v are
    running means of the gradient and its square, bias-corrected for their zero start."""

    def __init__(
        self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        for name, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= b < 1:
                raise ValueError(f"{name} must be in [0, 1), got {b}")
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.t = 0
        self.m: list[Array] | None = None
        self.v: list[Array] | None = None

    def step(self, params: list[Array], grads: list[Array]) -> None:
        if self.m is None or self.v is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.t += 1
        c1, c2 = 1 - self.beta1**self.t, 1 - self.beta2**self.t
        for p, g, m, v in zip(params, grads, self.m, self.v, strict=True):
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            p -= self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


OPTIMIZERS = ("gd", "momentum", "adam")


def make_optimizer(
    name: str,
    lr: float,
    momentum: float = 0.9,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> SGD | Adam:
    """"gd" (plain), "momentum" (heavy ball) or "adam"."""
    if name == "gd":
        return SGD(lr)
    if name == "momentum":
        return SGD(lr, momentum)
    if name == "adam":
        return Adam(lr, beta1, beta2, eps)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


@dataclass(frozen=True)
class Surface:
    """A loss f(p) with its hand-written gradient, a box to draw, a start and the minimum."""

    name: str
    formula: str
    f: Callable[[Array], float]
    grad: Callable[[Array], Array]
    bounds: tuple[tuple[float, float], ...]  # per coordinate, for drawing
    start: tuple[float, ...]
    minimum: tuple[float, ...]

    @property
    def dim(self) -> int:
        return len(self.start)


def _quad1(p: Array) -> float:
    return float((p[0] - 3.0) ** 2)


def _quad1_grad(p: Array) -> Array:
    return np.array([2.0 * (p[0] - 3.0)])


# Elongated bowl: curvature 1 along x, 20 along y. Plain GD is stable only for lr < 2/20,
# and at that lr crawls along x: the case momentum and Adam were made for.
def _bowl(p: Array) -> float:
    return float(0.5 * (p[0] ** 2 + 20.0 * p[1] ** 2))


def _bowl_grad(p: Array) -> Array:
    return np.array([p[0], 20.0 * p[1]])


def _rosen(p: Array) -> float:
    x, y = p
    return float((1 - x) ** 2 + 100 * (y - x * x) ** 2)


def _rosen_grad(p: Array) -> Array:
    x, y = p
    return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])


def _himmel(p: Array) -> float:
    x, y = p
    return float((x * x + y - 11) ** 2 + (x + y * y - 7) ** 2)


def _himmel_grad(p: Array) -> Array:
    x, y = p
    a, b = x * x + y - 11, x + y * y - 7
    return np.array([4 * x * a + 2 * b, 2 * a + 4 * y * b])


SURFACES: dict[str, Surface] = {
    s.name: s
    for s in (
        Surface("quadratic", "(x - 3)²", _quad1, _quad1_grad, ((-3.0, 9.0),), (-2.0,), (3.0,)),
        Surface(
            "bowl", "½(x² + 20y²)", _bowl, _bowl_grad, ((-5.0, 5.0), (-2.5, 2.5)), (-4.5, 1.5),
            (0.0, 0.0),
        ),
        Surface(
            "rosenbrock", "(1 - x)² + 100(y - x²)²", _rosen, _rosen_grad,
            ((-2.0, 2.0), (-1.0, 3.0)), (-1.5, 2.0), (1.0, 1.0),
        ),
        Surface(
            "himmelblau", "(x² + y - 11)² + (x + y² - 7)²", _himmel, _himmel_grad,
            ((-5.0, 5.0), (-5.0, 5.0)), (-0.5, -0.5), (3.0, 2.0),
        ),
    )
}


def get_surface(name: str) -> Surface:
    if name not in SURFACES:
        raise ValueError(f"surface must be one of {sorted(SURFACES)}, got {name!r}")
    return SURFACES[name]


@dataclass
class DescentRun:
    surface: str
    optimizer: str
    lr: float
    path: Array  # (steps_taken + 1, dim) positions, the start first
    losses: Array  # (steps_taken + 1,)
    grad_norms: Array  # (steps_taken + 1,)
    diverged: bool = False
    diverged_at: int | None = None  # the step where the loss blew up, if it did
    reason: str = ""

    @property
    def steps(self) -> int:
        return len(self.losses) - 1


BLOWUP = 1e4  # loss this many times the start's (or any non-finite value) stops the run


def run_descent(
    surface: Surface | str,
    optimizer: str = "gd",
    lr: float = 0.1,
    steps: int = 100,
    momentum: float = 0.9,
    beta1: float = 0.9,
    beta2: float = 0.999,
    start: tuple[float, ...] | None = None,
) -> DescentRun:
    """Take `steps` optimizer steps from `start`, recording the path and the loss.

    Diverged means the loss became non-finite or grew BLOWUP-fold (the run stops there), or
    the run ended above the loss it started from."""
    s = get_surface(surface) if isinstance(surface, str) else surface
    p = np.array(start if start is not None else s.start, dtype=np.float64)
    if p.shape != (s.dim,):
        raise ValueError(f"start must have {s.dim} coordinate(s), got {len(p)}")
    opt = make_optimizer(optimizer, lr, momentum, beta1, beta2)
    path, losses, gnorms = [p.copy()], [s.f(p)], []
    g = s.grad(p)
    gnorms.append(float(np.linalg.norm(g)))
    run = DescentRun(s.name, optimizer, lr, np.empty(0), np.empty(0), np.empty(0))
    limit = BLOWUP * max(losses[0], 1e-12)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(1, steps + 1):
            opt.step([p], [g])
            loss = s.f(p)
            path.append(p.copy())
            losses.append(loss)
            if not np.isfinite(loss) or loss > limit:
                run.diverged, run.diverged_at = True, t
                run.reason = (
                    f"loss became {loss:.3g} at step {t}"
                    if np.isfinite(loss)
                    else f"loss overflowed at step {t}"
                )
                gnorms.append(float("nan"))
                break
            g = s.grad(p)
            gnorms.append(float(np.linalg.norm(g)))
    if not run.diverged and losses[-1] > losses[0]:
        run.diverged = True
        run.reason = f"loss grew from {losses[0]:.3g} to {losses[-1]:.3g}"
    run.path, run.losses, run.grad_norms = np.array(path), np.array(losses), np.array(gnorms)
    return run


def surface_grid(surface: Surface | str, n: int = 80) -> dict[str, list]:
    """f on an n-point grid per coordinate over the surface's bounds (a curve in 1-D, an
    (n, n) grid in 2-D with rows along y), for drawing."""
    s = get_surface(surface) if isinstance(surface, str) else surface
    axes = [np.linspace(lo, hi, n) for lo, hi in s.bounds]
    if s.dim == 1:
        return {"x": axes[0].tolist(), "z": [s.f(np.array([x])) for x in axes[0]]}
    z = [[s.f(np.array([x, y])) for x in axes[0]] for y in axes[1]]
    return {"x": axes[0].tolist(), "y": axes[1].tolist(), "z": z}
