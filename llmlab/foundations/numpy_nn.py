"""A multi-layer perceptron in NumPy with backpropagation written out by hand.

Dense layers (x @ W + b), ReLU / tanh / sigmoid between them, a softmax cross-entropy on
the logits, and inverted dropout on the hidden activations. `backward` is the chain rule,
layer by layer, from the last to the first; tests check it against finite differences and
against torch autograd on the same weights."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from llmlab.foundations.descent import make_optimizer

Array = np.ndarray
ACTIVATIONS = ("relu", "tanh", "sigmoid")


def sigmoid(z: Array) -> Array:
    # exp(-log(1 + e^-z)), via logaddexp: no overflow for large |z| of either sign.
    return np.exp(-np.logaddexp(0.0, -z))


def activate(name: str, z: Array) -> Array:
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return sigmoid(z)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def activation_grad(name: str, z: Array, a: Array) -> Array:
    """d act(z) / dz, from the pre-activation z or the output a, whichever is cheaper."""
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "tanh":
        return 1.0 - a * a
    if name == "sigmoid":
        return a * (1.0 - a)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def log_softmax(logits: Array) -> Array:
    """Subtracting the row max first keeps exp() from overflowing (logits of 1e4 are fine):
    softmax is unchanged by a shift, and the largest term becomes exp(0) = 1."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: Array) -> Array:
    return np.exp(log_softmax(logits))


def softmax_cross_entropy(logits: Array, y: Array) -> tuple[float, Array]:
    """Mean of -log softmax(logits)[y] over the batch, and its gradient wrt the logits:
    (softmax - onehot(y)) / batch."""
    n = logits.shape[0]
    logp = log_softmax(logits)
    loss = -float(logp[np.arange(n), y].mean())
    d = np.exp(logp)
    d[np.arange(n), y] -= 1.0
    return loss, d / n


def dropout_mask(shape: tuple[int, ...], p: float, rng: np.random.Generator) -> Array:
    """Inverted dropout: keep each unit with probability 1 - p and scale kept ones by
    1 / (1 - p), so the expected activation is unchanged and evaluation needs no rescaling."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    return (rng.random(shape) >= p).astype(np.float64) / (1.0 - p)


class MLP:
    """sizes = [inputs, hidden..., classes]; params = [W0, b0, W1, b1, ...], W as (in, out)."""

    def __init__(
        self, sizes: list[int], activation: str = "relu", dropout: float = 0.0, seed: int = 0
    ) -> None:
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ValueError(f"sizes must be >= 2 positive layer widths, got {sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.sizes, self.activation, self.dropout = list(sizes), activation, dropout
        rng = np.random.default_rng(seed)
        # He init for ReLU (its half-zero outputs halve the variance), Glorot otherwise.
        gain = 2.0 if activation == "relu" else 1.0
        self.params: list[Array] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            self.params.append(rng.normal(0.0, np.sqrt(gain / fan_in), (fan_in, fan_out)))
            self.params.append(np.zeros(fan_out))

    @property
    def n_layers(self) -> int:
        return len(self.params) // 2

    def forward(
        self,
        x: Array,
        train: bool = False,
        rng: np.random.Generator | None = None,
        masks: list[Array] | None = None,
    ) -> tuple[Array, list[tuple[Array, Array, Array, Array | None]]]:
        """Logits, and per layer what backward needs: (input, z, act(z), dropout mask).
        Dropout acts in training only; `masks` fixes it (one per hidden layer) for tests."""
        a, cache = x, []
        for i in range(self.n_layers):
            w, b = self.params[2 * i], self.params[2 * i + 1]
            z = a @ w + b
            if i == self.n_layers - 1:
                cache.append((a, z, z, None))
                return z, cache
            h = activate(self.activation, z)
            mask = None
            if train and (masks is not None or self.dropout > 0):
                if masks is not None:
                    mask = masks[i]
                else:
                    mask = dropout_mask(h.shape, self.dropout, rng or np.random.default_rng())
            cache.append((a, z, h, mask))
            a = h * mask if mask is not None else h
        raise AssertionError("unreachable")

    def backward(self, cache: list[tuple[Array, Array, Array, Array | None]], dlogits: Array
                 ) -> list[Array]:
        """Gradients of the loss for every parameter, given d loss / d logits (chain rule)."""
        grads: list[Array] = [np.empty(0)] * len(self.params)
        d = dlogits  # d loss / d z of the current layer
        for i in reversed(range(self.n_layers)):
            a_in, z, h, mask = cache[i]
            if i < self.n_layers - 1:  # through the dropout mask and the activation
                if mask is not None:
                    d = d * mask
                d = d * activation_grad(self.activation, z, h)
            grads[2 * i] = a_in.T @ d  # z = a_in @ W + b
            grads[2 * i + 1] = d.sum(axis=0)
            d = d @ self.params[2 * i].T  # d loss / d a_in, for the layer below
        return grads

    def loss_and_grads(
        self,
        x: Array,
        y: Array,
        train: bool = False,
        rng: np.random.Generator | None = None,
        masks: list[Array] | None = None,
    ) -> tuple[float, list[Array]]:
        logits, cache = self.forward(x, train, rng, masks)
        loss, dlogits = softmax_cross_entropy(logits, y)
        return loss, self.backward(cache, dlogits)

    def predict_proba(self, x: Array) -> Array:
        return softmax(self.forward(x)[0])

    def accuracy(self, x: Array, y: Array) -> float:
        return float((self.forward(x)[0].argmax(axis=1) == y).mean())


@dataclass
class Snapshot:
    step: int
    loss: float  # training loss on the whole training set, without dropout
    train_acc: float
    test_acc: float | None


def train_mlp(
    net: MLP,
    x: Array,
    y: Array,
    steps: int = 1000,
    lr: float = 0.01,
    optimizer: str = "adam",
    batch_size: int = 0,
    every: int = 50,
    seed: int = 0,
    x_test: Array | None = None,
    y_test: Array | None = None,
) -> Iterator[Snapshot]:
    """Train in place; yield a Snapshot at step 0, every `every` steps and at the end.
    batch_size 0 means full batch. Reuses the optimizers of `descent` (SGD / momentum /
    Adam) on the list of weight arrays."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    opt = make_optimizer(optimizer, lr)
    rng = np.random.default_rng(seed)
    every = max(1, every)

    def snap(step: int) -> Snapshot:
        loss = softmax_cross_entropy(net.forward(x)[0], y)[0]
        test = net.accuracy(x_test, y_test) if x_test is not None and y_test is not None else None
        return Snapshot(step, loss, net.accuracy(x, y), test)

    yield snap(0)
    n = len(x)
    for t in range(1, steps + 1):
        if 0 < batch_size < n:
            idx = rng.choice(n, batch_size, replace=False)
            xb, yb = x[idx], y[idx]
        else:
            xb, yb = x, y
        _, grads = net.loss_and_grads(xb, yb, train=True, rng=rng)
        opt.step(net.params, grads)
        if t % every == 0 or t == steps:
            yield snap(t)


def dropout_comparison(
    x: Array,
    y: Array,
    x_test: Array,
    y_test: Array,
    p: float = 0.3,
    sizes: list[int] | None = None,
    activation: str = "relu",
    steps: int = 2000,
    lr: float = 0.01,
    seed: int = 0,
    check: Callable[[], None] | None = None,
) -> dict[float, tuple[MLP, Snapshot]]:
    """The same over-sized network trained twice on the same points, with dropout 0 and
    `p`: dropout stops units from co-adapting to single noisy points, so the train-test gap
    usually shrinks. Both runs start from the same weights. `check` is called every 100
    steps and may raise to stop early (a server's client that left); the snapshots it adds
    draw no random numbers, so the result is the same."""
    sizes = sizes or [x.shape[1], 64, 64, int(y.max()) + 1]
    out = {}
    for rate in (0.0, p):
        net = MLP(sizes, activation, rate, seed)
        every = 100 if check is not None else steps
        last = None
        for last in train_mlp(net, x, y, steps, lr, every=every, seed=seed,  # noqa: B007
                              x_test=x_test, y_test=y_test):
            if check is not None:
                check()
        assert last is not None  # train_mlp always yields step 0
        out[rate] = (net, last)
    return out
