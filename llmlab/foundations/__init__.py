"""Foundations: what training is, before transformers.

    from llmlab.foundations import run_descent, MLP, train_mlp, make_toy, poly_fit
    run = run_descent("rosenbrock", "adam", lr=0.05, steps=300)   # path + loss per step
    net = MLP([2, 16, 16, 2], "tanh"); list(train_mlp(net, x, y, steps=1000))
    wv = load_or_train(); wv.analogy("man", "king", "woman")       # word2vec on the KJV
    TokenSpace.load().neighbours("king")                           # SmolLM2's token table

Gradient descent, the NumPy network and the polynomial fits need only NumPy; word2vec and
the token embeddings import torch when first used (names resolve lazily)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "descent": ("SGD", "Adam", "make_optimizer", "Surface", "SURFACES", "get_surface",
                "DescentRun", "run_descent", "surface_grid"),
    "numpy_nn": ("MLP", "Snapshot", "train_mlp", "activate", "activation_grad", "sigmoid",
                 "softmax", "log_softmax", "softmax_cross_entropy", "dropout_mask",
                 "dropout_comparison", "ACTIVATIONS"),
    "toydata": ("make_toy", "ToySet", "decision_grid", "SETS"),
    "overfit": ("sine_data", "legendre_features", "fit_ridge", "poly_fit", "PolyFit",
                "degree_sweep", "ridge_sweep"),
    "word2vec": ("W2VConfig", "WordVectors", "train_word2vec", "load_or_train",
                 "corpus_sentences", "build_vocab", "keep_probability", "noise_distribution",
                 "skipgram_pairs", "sgns_loss", "sgns_grads", "sgns_step"),
    "token_embeddings": ("TokenSpace",),
    "vectors": ("VectorSpace",),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'llmlab.foundations' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"llmlab.foundations.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
