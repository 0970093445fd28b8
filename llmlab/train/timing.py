"""Seconds per training phase (batch, forward/backward, optimizer, eval), for metrics.jsonl."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch


class PhaseTimer:
    """Wall-clock seconds per named phase, summed until taken.

    On a GPU the work a phase queues may still be running when the phase returns, so its
    time lands in whichever later phase waits for it. `sync_device` drains the queue at
    every boundary, which makes each phase's time exact but stops the host from running
    ahead: for benchmarks, not for training."""

    def __init__(self, sync_device: torch.device | None = None) -> None:
        self.sync = sync_device if sync_device is not None and sync_device.type == "cuda" \
            else None
        self.total: defaultdict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        self._wait()
        t = time.perf_counter()
        try:
            yield
        finally:
            self._wait()
            self.total[phase] += time.perf_counter() - t

    def _wait(self) -> None:
        if self.sync is not None:
            torch.cuda.synchronize(self.sync)

    def take(self, phase: str) -> float:
        return self.total.pop(phase, 0.0)

    def per_step(self, steps: int) -> dict[str, float]:
        """{"time/<phase>": mean seconds per step} over `steps` steps, then start again."""
        out = {f"time/{k}": v / max(1, steps) for k, v in self.total.items()}
        self.total.clear()
        return out
