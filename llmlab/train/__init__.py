"""Training: one loop (`Trainer`) shared by every algorithm; pretraining plugs in a loss.

Names resolve lazily: the CLI reads `llmlab.train.config` and `.flags` to build flags
without torch."""

from typing import Any

from llmlab.train.config import TrainConfig

_LOOP = ("BatchSource", "Trainer", "TrainingDiverged")
__all__ = ["BatchSource", "TrainConfig", "Trainer", "TrainingDiverged"]


def __getattr__(name: str) -> Any:
    if name not in _LOOP:
        raise AttributeError(f"module 'llmlab.train' has no attribute {name!r}")
    from llmlab.train import loop

    return getattr(loop, name)
