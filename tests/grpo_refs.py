"""TRL's GRPO advantage formula, run from TRL's own source: the lines of
`GRPOTrainer._generate_and_score_completions` that turn rewards into advantages
(group mean, then the std of the group / the batch / none), executed on given rewards."""

from __future__ import annotations

import inspect
import textwrap
from types import SimpleNamespace

import torch

FIRST = "mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)"
LAST = "advantages = advantages / (std_rewards + 1e-4)"


def trl_advantages(rewards: list[float], num_generations: int, scale: str) -> list[float]:
    from trl import GRPOTrainer
    from trl.trainer import grpo_trainer

    src = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    lines = src.splitlines()
    a = next(i for i, ln in enumerate(lines) if ln.strip() == FIRST)
    b = next(i for i, ln in enumerate(lines) if i > a and ln.strip() == LAST)
    code = textwrap.dedent("\n".join(lines[a:b + 1]))
    ns = {"torch": torch, "nanstd": grpo_trainer.nanstd, "num_generations": num_generations,
          "rewards": torch.tensor(rewards, dtype=torch.float32),
          "self": SimpleNamespace(scale_rewards=scale)}
    exec(code, ns)  # noqa: S102 - TRL's own lines, the reference
    return ns["advantages"].tolist()
