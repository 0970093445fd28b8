"""The NumPy network: hand-written backprop vs central finite differences and vs torch
autograd on the same weights (every activation, softmax cross-entropy, dropout with a fixed
mask), softmax stability, and training that actually learns the toy sets."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmlab.foundations import (
    ACTIVATIONS,
    MLP,
    decision_grid,
    dropout_comparison,
    dropout_mask,
    log_softmax,
    make_toy,
    sigmoid,
    softmax_cross_entropy,
    train_mlp,
)


def _case(activation: str, seed: int = 0) -> tuple[MLP, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    net = MLP([3, 5, 4, 3], activation, seed=seed)
    for p in net.params:  # non-zero biases so every term of the gradient is exercised
        p += rng.normal(0, 0.3, p.shape)
    return net, rng.normal(size=(7, 3)), rng.integers(0, 3, 7)


def _masks(net: MLP, p: float, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [dropout_mask((7, n), p, rng) for n in net.sizes[1:-1]]


def _numeric_grads(net: MLP, x: np.ndarray, y: np.ndarray, masks: list[np.ndarray] | None,
                   eps: float = 1e-6) -> list[np.ndarray]:
    out = []
    for p in net.params:
        g = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + eps
            up = net.loss_and_grads(x, y, train=masks is not None, masks=masks)[0]
            p[i] = old - eps
            down = net.loss_and_grads(x, y, train=masks is not None, masks=masks)[0]
            p[i] = old
            g[i] = (up - down) / (2 * eps)
        out.append(g)
    return out


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("p", [0.0, 0.4])
def test_backprop_matches_finite_differences(activation: str, p: float) -> None:
    net, x, y = _case(activation)
    masks = _masks(net, p) if p > 0 else None
    _, grads = net.loss_and_grads(x, y, train=masks is not None, masks=masks)
    for g, n in zip(grads, _numeric_grads(net, x, y, masks), strict=True):
        np.testing.assert_allclose(g, n, rtol=1e-6, atol=1e-8)


def _torch_loss(net: MLP, x: np.ndarray, y: np.ndarray, masks: list[np.ndarray] | None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    act = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[net.activation]
    params = [torch.tensor(p, requires_grad=True) for p in net.params]
    a = torch.tensor(x)
    for i in range(net.n_layers):
        a = a @ params[2 * i] + params[2 * i + 1]
        if i < net.n_layers - 1:
            a = act(a)
            if masks is not None:
                a = a * torch.tensor(masks[i])
    return F.cross_entropy(a, torch.tensor(y)), params


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("p", [0.0, 0.5])
def test_backprop_matches_torch_autograd(activation: str, p: float) -> None:
    net, x, y = _case(activation, seed=3)
    masks = _masks(net, p) if p > 0 else None
    loss, grads = net.loss_and_grads(x, y, train=masks is not None, masks=masks)
    tloss, tparams = _torch_loss(net, x, y, masks)
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-12)
    for g, t in zip(grads, tparams, strict=True):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_softmax_cross_entropy_is_stable_for_huge_logits() -> None:
    logits = np.array([[1e4, 0.0, -1e4], [1000.0, 1000.0, 1000.0], [-800.0, 5.0, 700.0]])
    y = np.array([1, 2, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in exp() would raise here
        loss, d = softmax_cross_entropy(logits, y)
        lp = log_softmax(logits)
    t = torch.tensor(logits, requires_grad=True)
    ref = F.cross_entropy(t, torch.tensor(y))
    ref.backward()
    assert np.isfinite(loss) and loss == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(lp, torch.log_softmax(torch.tensor(logits), -1).numpy())
    np.testing.assert_allclose(d, t.grad.numpy(), atol=1e-15)
    with np.errstate(over="ignore"):  # the naive formula really does overflow here
        assert not np.isfinite(np.exp(logits[0]).sum())


def test_sigmoid_is_stable_at_the_extremes() -> None:
    z = np.array([-1000.0, -40.0, -1.0, 0.0, 2.5, 40.0, 1000.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = sigmoid(z)
    np.testing.assert_allclose(s, torch.sigmoid(torch.tensor(z)).numpy(), rtol=1e-12, atol=0)


def test_inverted_dropout_keeps_the_expectation_and_is_off_at_eval() -> None:
    m = dropout_mask((400, 500), 0.3, np.random.default_rng(0))
    # 200k Bernoulli(0.7) draws: the kept fraction is 0.7 +- 0.001 (1 sd), the mean 1.
    assert (m > 0).mean() == pytest.approx(0.7, abs=0.005)
    assert m.mean() == pytest.approx(1.0, abs=0.01)
    assert set(np.unique(m)) == {0.0, 1 / 0.7}
    net, x, _ = _case("relu")
    net.dropout = 0.5
    a = net.forward(x)[0]
    np.testing.assert_array_equal(a, net.forward(x)[0])  # eval: deterministic, no masks
    assert not np.allclose(a, net.forward(x, train=True, rng=np.random.default_rng(0))[0])


@pytest.mark.parametrize(
    "name,noise,sizes,steps",
    [("moons", 0.15, [2, 16, 16, 2], 800), ("spirals", 0.05, [2, 32, 32, 2], 2500),
     ("circles", 0.1, [2, 8, 8, 2], 800), ("xor", 0.05, [2, 8, 8, 2], 800)],
)
def test_training_learns_the_toy_sets(name: str, noise: float, sizes: list[int], steps: int
                                      ) -> None:
    d = make_toy(name, 300, noise, seed=1)
    net = MLP(sizes, "tanh", seed=0)
    snaps = list(train_mlp(net, d.x_train, d.y_train, steps=steps, lr=0.03, every=100,
                           x_test=d.x_test, y_test=d.y_test))
    first, last = snaps[0], snaps[-1]
    assert first.test_acc < 0.8  # the untrained net is near chance
    assert last.test_acc >= 0.9 and last.train_acc >= 0.95, last
    assert last.loss < 0.25 * first.loss
    # The painted boundary agrees with the classifier: P(class 1) > 0.5 where it says 1.
    grid = decision_grid(net.predict_proba, n=20)
    assert grid.shape == (20, 20) and ((grid >= 0) & (grid <= 1)).all()
    c = -1.5 + 0.15 * (np.arange(20) + 0.5)
    pts = np.stack(np.meshgrid(c, c), -1).reshape(-1, 2)
    np.testing.assert_array_equal((grid.ravel() > 0.5), net.forward(pts)[0].argmax(1) == 1)


def test_dropout_narrows_the_gap_on_a_small_noisy_set() -> None:
    d = make_toy("moons", 100, 0.25, seed=0)
    out = dropout_comparison(d.x_train, d.y_train, d.x_test, d.y_test, p=0.3, steps=2000)
    plain, dropped = out[0.0][1], out[0.3][1]
    assert plain.train_acc == 1.0  # the big net memorises the 50 noisy points
    assert dropped.test_acc > plain.test_acc
    assert (dropped.train_acc - dropped.test_acc) < (plain.train_acc - plain.test_acc)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="activation"):
        MLP([2, 3, 2], "gelu")
    with pytest.raises(ValueError, match="dropout"):
        MLP([2, 3, 2], dropout=1.0)
    with pytest.raises(ValueError, match="sizes"):
        MLP([2])
    with pytest.raises(ValueError, match="dataset"):
        make_toy("swiss")
