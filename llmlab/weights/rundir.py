"""A training run's directory as a loader reads it: its complete checkpoints, the best one by
validation loss, and which model `llmlab.load(run_dir)` means. train/checkpoint.py writes it.

    RUN_DIR/final/                      the finished model
    RUN_DIR/checkpoints/step_0000200/   model/, trainer.pt, meta.json (step, val loss)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

LLMLAB_CONFIG = "llmlab.json"  # our own checkpoints: ModelConfig + our key names
CKPT_DIR = "checkpoints"
_STEP = re.compile(r"^step_(\d+)$")


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first (temp dirs of interrupted writes have other names)."""
    root = run_dir / CKPT_DIR
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP.match(p.name)
        if m and (p / "meta.json").exists() and (p / "trainer.pt").exists():
            out.append((int(m.group(1)), p))
    return sorted(out)


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((path / "meta.json").read_text())


def best_checkpoint(run_dir: Path, found: list[tuple[int, Path]] | None = None) -> Path | None:
    """The checkpoint with the lowest val loss (`found`: list_checkpoints' answer, if had)."""
    found = list_checkpoints(run_dir) if found is None else found
    scored = [(read_meta(p).get("val_loss"), p) for _, p in found]
    scored = [(v, p) for v, p in scored if v is not None]
    return min(scored, key=lambda vp: vp[0])[1] if scored else None


def run_model_dir(path: Path) -> Path:
    """A training run dir resolves to its finished model, or (stopped early) to its best
    checkpoint by val loss, else its latest; any other dir is returned unchanged."""
    if (path / "final" / LLMLAB_CONFIG).exists():
        return path / "final"
    if not ((path / CKPT_DIR).is_dir() or (path / "run.json").exists()):
        return path  # not a training run
    found = list_checkpoints(path)
    ckpt = best_checkpoint(path, found) or (found[-1][1] if found else None)
    if ckpt is None:
        raise FileNotFoundError(f"{path}: a training run with no final/ model and no complete "
                                "checkpoint yet")
    print(f"{path}: no final/ model yet; loading {ckpt.name}", file=sys.stderr)
    return ckpt / "model"
