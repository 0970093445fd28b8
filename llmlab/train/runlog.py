"""What a run writes as it goes: metrics.jsonl (and TensorBoard events when installed) and
samples.jsonl. Only the main rank writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llmlab.train.checkpoint import trim_metrics

METRICS, SAMPLES = "metrics.jsonl", "samples.jsonl"


class RunLog:
    def __init__(self, run_dir: Path, active: bool) -> None:
        self.run_dir, self.active = run_dir, active
        self.writer: Any = None

    def open_tensorboard(self) -> None:
        if not self.active:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional: metrics.jsonl has everything
            return
        self.writer = SummaryWriter(str(self.run_dir / "tb"))

    def fresh(self) -> None:
        """A fresh run starts a fresh record."""
        if self.active:
            (self.run_dir / METRICS).unlink(missing_ok=True)

    def trim(self, step: int) -> None:
        """Drop the records after `step` (a resumed run writes them again)."""
        if self.active:
            for f in (METRICS, SAMPLES):
                trim_metrics(self.run_dir / f, step)

    def metrics(self, rec: dict[str, Any]) -> None:
        if not self.active:
            return
        with (self.run_dir / METRICS).open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, rec["step"])

    def samples(self, step: int, texts: list[str] | list[dict[str, Any]], echo: bool) -> None:
        if not self.active:
            return
        with (self.run_dir / SAMPLES).open("a") as f:
            for t in texts:  # a dict's fields ({"prompt", "answer", ...}) as they are
                item = t if isinstance(t, dict) else {"text": t}
                f.write(json.dumps({"step": step, **item}) + "\n")
                if echo:
                    tqdm.write(f"[step {step}] {t!r}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
