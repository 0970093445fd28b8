"""The CPU speedrun: a recipe (`speedrun-cpu`) against the baseline (`tiny-cpu`) in time to a
pinned validation bits per byte. One source for the target and for what each recipe is, read
by benchmarks/speedrun_cpu.py and by the playground's race. Torch-free."""

from __future__ import annotations

import dataclasses
from typing import Any

from llmlab.train.config import TrainConfig
from llmlab.train.presets import PRESETS

BASELINE, RECIPE = "tiny-cpu", "speedrun-cpu"
# What tiny-cpu reaches at step 600 on the KJV split that `llmlab data prepare` makes with
# bpe:4096 and val_fraction 0.05: 1.3296 (seed 0) to 1.3460 (seed 2) over seeds 0-2, so the
# target is 1.35, which every baseline seed reaches within its run. See
# benchmarks/SPEEDRUN.md.
TARGET_BPB = 1.35
# Evaluating often costs nothing measured (time to target excludes evaluation), and gives
# the curve its points.
EVAL_EVERY = 25
# A byte holds 8 bits: a target above that is met by a model that has learned nothing.
MAX_TARGET_BPB = 8.0

# The settings that tell the recipes apart, in the order a page lists them.
SWITCHES = ("optimizer", "schedule", "batch_size", "max_steps", "seq_len", "lr", "muon_lr",
            "embed_lr", "warmup_steps", "cooldown", "weight_decay", "precision")


def switches(preset: str) -> dict[str, Any]:
    """A preset's training settings as the Trainer resolves them (the preset's own over
    TrainConfig's defaults), the ones in SWITCHES, plus tokens per step. Settings that its
    optimizer or schedule does not use (muon_lr under AdamW, cooldown outside wsd) are left
    out, so a page shows only what acts."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    train = {**dataclasses.asdict(TrainConfig()), **PRESETS[preset]["train"]}
    out = {k: train[k] for k in SWITCHES}
    if out["optimizer"] != "muon":
        del out["muon_lr"]
    if out["optimizer"] != "muon" or not out["embed_lr"]:
        del out["embed_lr"]
    if out["schedule"] != "wsd":
        del out["cooldown"]
    out["tokens_per_step"] = train["batch_size"] * train["seq_len"] * train["grad_accum"]
    model = PRESETS[preset]["model"]  # the model switches a recipe turns on
    out["embeddings"] = "tied" if model.get("tie_embeddings", True) else "untied"
    if model.get("value_embeds"):
        out["value_embeds"] = model["value_embeds"]
    return out


def check_target(target: float) -> float:
    """A target val bpb a race or benchmark may run to: in (0, MAX_TARGET_BPB]."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) \
            or not 0 < target <= MAX_TARGET_BPB:
        raise ValueError(f"target_val_bpb: expected a number in (0, {MAX_TARGET_BPB:g}] bits "
                         f"per byte, got {target!r}")
    return float(target)
