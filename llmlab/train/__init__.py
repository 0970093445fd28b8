"""Training: one loop (`Trainer`) shared by every algorithm; pretraining plugs in a loss."""

from llmlab.train.config import TrainConfig
from llmlab.train.loop import BatchSource, Trainer, TrainingDiverged

__all__ = ["BatchSource", "TrainConfig", "Trainer", "TrainingDiverged"]
