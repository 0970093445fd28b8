"""Gradient descent: surfaces' hand-written gradients vs torch autograd, our GD / momentum /
Adam paths vs torch.optim on the same function, and divergence at the analytic limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmlab.foundations import SURFACES, Adam, make_optimizer, run_descent, surface_grid

# The surfaces written again, independently, in torch: autograd differentiates these.
TORCH_F = {
    "quadratic": lambda p: (p[0] - 3) ** 2,
    "bowl": lambda p: 0.5 * (p[0] ** 2 + 20 * p[1] ** 2),
    "rosenbrock": lambda p: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2,
    "himmelblau": lambda p: (p[0] ** 2 + p[1] - 11) ** 2 + (p[0] + p[1] ** 2 - 7) ** 2,
}


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_surface_value_and_gradient_match_autograd(name: str) -> None:
    s = SURFACES[name]
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = np.array([rng.uniform(lo, hi) for lo, hi in s.bounds])
        t = torch.tensor(p, requires_grad=True)
        f = TORCH_F[name](t)
        f.backward()
        assert s.f(p) == pytest.approx(f.item(), rel=1e-12)
        np.testing.assert_allclose(s.grad(p), t.grad.numpy(), rtol=1e-10, atol=1e-10)
    assert s.f(np.array(s.minimum)) == pytest.approx(0.0, abs=1e-12)


def _torch_path(name: str, opt_name: str, lr: float, steps: int, momentum: float = 0.9
                ) -> np.ndarray:
    p = torch.tensor(SURFACES[name].start, dtype=torch.float64, requires_grad=True)
    if opt_name == "adam":
        opt = torch.optim.Adam([p], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    else:
        opt = torch.optim.SGD([p], lr=lr, momentum=momentum if opt_name == "momentum" else 0.0)
    path = [p.detach().clone().numpy()]
    for _ in range(steps):
        opt.zero_grad()
        TORCH_F[name](p).backward()
        opt.step()
        path.append(p.detach().clone().numpy())
    return np.array(path)


@pytest.mark.parametrize(
    "name,opt,lr",
    [
        ("quadratic", "gd", 0.1), ("quadratic", "momentum", 0.05), ("quadratic", "adam", 0.3),
        ("bowl", "gd", 0.09), ("bowl", "momentum", 0.02), ("bowl", "adam", 0.1),
        ("rosenbrock", "gd", 1e-3), ("rosenbrock", "momentum", 2e-4), ("rosenbrock", "adam", 0.05),
        ("himmelblau", "momentum", 0.005), ("himmelblau", "adam", 0.1),
    ],
)
def test_path_matches_torch_optim(name: str, opt: str, lr: float) -> None:
    run = run_descent(name, opt, lr=lr, steps=200)
    assert not run.diverged, run.reason
    ref = _torch_path(name, opt, lr, 200)
    np.testing.assert_allclose(run.path, ref, rtol=1e-9, atol=1e-11)
    assert run.losses[-1] < run.losses[0]


def test_optimizers_on_several_arrays_match_torch() -> None:
    """The NumPy network hands the optimizers a list of weight arrays of different shapes."""
    rng = np.random.default_rng(1)
    shapes = [(3, 4), (4,), (4, 2)]
    grads = [[rng.normal(size=s) for s in shapes] for _ in range(15)]
    for name in ("gd", "momentum", "adam"):
        ours = [rng.normal(size=s) for s in shapes]
        theirs = [torch.tensor(a.copy(), requires_grad=True) for a in ours]
        opt = make_optimizer(name, 0.05, momentum=0.8, beta1=0.85, beta2=0.99)
        if name == "adam":
            topt = torch.optim.Adam(theirs, lr=0.05, betas=(0.85, 0.99))
        else:
            topt = torch.optim.SGD(theirs, lr=0.05, momentum=0.8 if name == "momentum" else 0)
        for gs in grads:
            opt.step(ours, gs)
            for t, g in zip(theirs, gs, strict=True):
                t.grad = torch.tensor(g)
            topt.step()
        for a, t in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_gd_on_quadratic_follows_the_closed_form_and_diverges_past_lr_1() -> None:
    # x_t - 3 = (1 - 2 lr)^t (x_0 - 3): it shrinks iff |1 - 2 lr| < 1, i.e. lr < 1.
    for lr in (0.1, 0.6, 0.99):
        run = run_descent("quadratic", "gd", lr=lr, steps=60)
        t = np.arange(61)
        np.testing.assert_allclose(run.path[:, 0], 3 + (1 - 2 * lr) ** t * (-2 - 3), atol=1e-12)
        assert not run.diverged
    slow = run_descent("quadratic", "gd", lr=1.01, steps=60)
    assert slow.diverged and slow.diverged_at is None and "grew" in slow.reason
    fast = run_descent("quadratic", "gd", lr=3.0, steps=100)
    # |1 - 2*3| = 5 per step: the loss (25x per step) passes the 1e4 blow-up limit at step 3.
    assert fast.diverged and fast.diverged_at == 3 and fast.steps == 3
    assert len(fast.path) == len(fast.losses) == 4


def test_momentum_is_stable_where_gd_diverges_on_the_elongated_bowl() -> None:
    # Curvature 20 along y: GD needs lr < 2/20; heavy-ball momentum b needs lr < 2(1+b)/20.
    assert not run_descent("bowl", "gd", lr=0.099, steps=300).diverged
    assert run_descent("bowl", "gd", lr=0.101, steps=300).diverged
    assert not run_descent("bowl", "momentum", lr=0.18, momentum=0.9, steps=600).diverged
    assert run_descent("bowl", "momentum", lr=0.2, momentum=0.9, steps=600).diverged


def test_overflow_is_reported_not_raised() -> None:
    run = run_descent("rosenbrock", "gd", lr=0.05, steps=100)
    assert run.diverged and run.diverged_at is not None and run.diverged_at <= 10
    assert np.isfinite(run.losses[:-1]).all()


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        run_descent("bowl", "rmsprop")
    with pytest.raises(ValueError, match="surface"):
        run_descent("nope")
    with pytest.raises(ValueError, match="lr"):
        run_descent("bowl", "gd", lr=0)
    with pytest.raises(ValueError, match="momentum"):
        make_optimizer("momentum", 0.1, momentum=1.0)
    with pytest.raises(ValueError, match="beta2"):
        Adam(0.1, beta2=1.0)
    with pytest.raises(ValueError, match="start"):
        run_descent("bowl", start=(1.0,))


def test_surface_grid_is_f_on_the_grid() -> None:
    g = surface_grid("rosenbrock", n=7)
    s = SURFACES["rosenbrock"]
    assert len(g["z"]) == 7 and len(g["z"][0]) == 7
    assert g["z"][2][5] == pytest.approx(s.f(np.array([g["x"][5], g["y"][2]])))
    assert len(surface_grid("quadratic", n=9)["z"]) == 9


def test_numpy_parts_import_without_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from llmlab.foundations import run_descent, MLP, train_mlp, make_toy, "
            "poly_fit; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
