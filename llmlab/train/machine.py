"""What the training run runs on: the device's name (run.json, benchmarks), the CPU
allocator setting the Trainer makes, and the stop signal it listens for."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import signal
import threading
from pathlib import Path
from typing import Any

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back to the kernel.

    A CPU training step allocates and frees the same large activations every step; by
    default glibc serves them with mmap/munmap (or trims the heap), so each step page-faults
    fresh zeroed pages: on the tiny-cpu step that was 10-20k faults and ~10% of the step in
    the kernel. The settings are glibc's own knobs (mallopt); elsewhere this does nothing."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return bool(libc.mallopt(m_trim_threshold, 1 << 30)
                and libc.mallopt(m_mmap_threshold, 1 << 25))  # 32 MiB: glibc's maximum


class StopOnSigterm:
    """SIGTERM asks the run to stop after the step in progress, with a checkpoint, instead of
    dying mid-step: the playground's stop button and a cluster's preemption both send it.
    Only in the main thread of a single process (a signal handler can't be set elsewhere, and
    DDP ranks would have to agree on the step)."""

    def __init__(self, enabled: bool = True) -> None:
        self.requested = False
        self._old: Any = None
        if enabled and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum: int, frame: Any) -> None:
        self.requested = True

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None
