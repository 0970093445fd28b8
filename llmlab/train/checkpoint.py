"""Training checkpoints: everything needed to continue a run exactly where it stopped.

    RUN_DIR/checkpoints/step_0000200/
        model/        loadable with llmlab.load (llmlab.json, model.safetensors, tokenizer)
        trainer.pt    optimizer, scheduler, data position, counters, config, RNG state per rank
        meta.json     step and val loss (read to pick latest / best without unpickling)

Each checkpoint directory is built beside its final name and renamed into place, so a crash
(even SIGKILL) leaves either the whole checkpoint or none of it.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmlab.weights.io import atomic_dir, atomic_write_bytes, load_safetensors
from llmlab.weights.rundir import CKPT_DIR, list_checkpoints, read_meta

# A scalar head (reward model, PPO value head) is saved beside the model's own files, since
# neither llmlab.json checkpoints nor PEFT adapters have a place for it; resume merges it in.
HEAD_WEIGHTS = "score_head.safetensors"


def rng_state() -> dict[str, Any]:
    s: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CKPT_DIR / f"step_{step:07d}"


def save(path: Path, trainer_state: dict[str, Any], meta: dict[str, Any],
         write_model: Any) -> None:
    """Write one checkpoint atomically; `write_model(dir)` fills the model/ subdirectory."""
    with atomic_dir(path) as tmp:
        write_model(tmp / "model")
        torch.save(trainer_state, tmp / "trainer.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def load_trainer_state(path: Path) -> dict[str, Any]:
    try:
        # Our own file, holding numpy RNG state and python tuples: not weights-only.
        return torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"{path / 'trainer.pt'}: unreadable checkpoint ({e})") from None


def load_model_weights(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's model weights, its scalar head's included."""
    model = path / "model"
    try:
        msd = load_safetensors(model / "model.safetensors")
        if (model / HEAD_WEIGHTS).exists():
            msd.update(load_safetensors(model / HEAD_WEIGHTS))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot resume from {path}: {e}") from None
    return msd


def trim_metrics(metrics: Path, step: int) -> None:
    """Forget the records an interrupted run wrote after the checkpoint at `step`."""
    if metrics.exists():
        kept = [ln for ln in metrics.read_text().splitlines() if _step_of(ln) <= step]
        atomic_write_bytes(metrics, "".join(ln + "\n" for ln in kept).encode())


def _step_of(line: str) -> float:
    """A record's step; a line cut short by a killed writer counts as after every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def prune(run_dir: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints and the one with the lowest val loss."""
    ckpts = list_checkpoints(run_dir)
    scored = [(read_meta(p).get("val_loss"), p) for _, p in ckpts]
    scored = [(v, p) for v, p in scored if v is not None]
    best = min(scored, key=lambda vp: vp[0])[1] if scored else None
    keep = {p for _, p in ckpts[-keep_last:]} if keep_last else set()
    for _, p in ckpts:
        if p not in keep and p != best:
            shutil.rmtree(p, ignore_errors=True)


def check_compatible(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """Refuse to resume when anything that shapes the model or the data order differs."""
    diffs = []
    for k, v in current.items():
        old = saved.get(k)
        if isinstance(v, dict) and isinstance(old, dict):  # name the differing fields
            # A field newer than the checkpoint (absent there) matches while it is off (0,
            # False, None): new switches default to off, as the run that wrote it had them.
            diffs += [f"{k}.{f}: checkpoint {old.get(f)!r}, this run {v.get(f)!r}"
                      for f in sorted(set(v) | set(old))
                      if old.get(f) != v.get(f) and (f in old or v.get(f))]
        elif old != v:
            diffs.append(f"{k}: checkpoint {old!r}, this run {v!r}")
    if diffs:
        raise ValueError(f"cannot resume from {where}: incompatible settings ("
                         + "; ".join(diffs) + "); use the checkpoint's values or a new --out")
