"""A playground run as a policy with its reference, the pair DPO trained (and PPO, GRPO
measure KL against): an adapter run's adapter kept as an adapter on a copy of its base, so
π_ref is that policy with its adapters disabled (`align.common.Reference`), never a merged
model; a full-weight run against its base model."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from llmlab.lab.rundir import base_section, is_adapter, model_dir, read_json
from llmlab.peft.model import load_adapter


def run_base(run_dir: Path) -> str:
    """The model a run started from (its config.json), which is its π_ref."""
    base = base_section(read_json(run_dir / "config.json")).get("model")
    if not base:
        raise ValueError(f"model: run {run_dir.name} has no base model (a pretraining run "
                         "is not a policy: pick an SFT, DPO, PPO or GRPO run)")
    return str(base)


def policy_and_reference(run_dir: Path, step: int | None,
                         base_model: Callable[[str], Any]) -> tuple[nn.Module, nn.Module | None]:
    """(π, π_ref) for run `run_dir` (checkpoint `step`, else its final model). π_ref None:
    π is a LoRA-family PeftModel whose disabled adapters give the reference. `base_model(name)`
    gives a loaded base (`llmlab.load`'s result, shared: an adapter goes on a copy)."""
    base = base_model(run_base(run_dir))
    path = model_dir(run_dir, step)
    if is_adapter(run_dir):
        pm = load_adapter(copy.deepcopy(base.model), path)
        if pm.method not in ("lora", "dora"):
            raise ValueError(f"model: run {run_dir.name} holds a {pm.method} adapter; the "
                             "reference needs LoRA or DoRA")
        return pm.eval().requires_grad_(False), None
    import llmlab

    return llmlab.load(str(path)).model.eval(), base.model
