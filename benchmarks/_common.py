"""What every benchmark shares: the machine line, timers and the final JSON line; plus the
tokenizer benchmarks' corpus and timed worker processes.

A script prints `machine: ...` first (`print_machine`), times with `stopwatch` (or `timed` for
a function called from inside a peer's code) and ends with one JSON line (`emit`), so that
runs compare line by line and a driver can read the last line of any of them."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where used: httpx-only clients and tokenizer workers skip it
    import torch

ROOT = Path(__file__).resolve().parents[1]
DOC_CHARS = 64 * 1024


def machine(device: str | torch.device | None = None) -> str:
    """CPU model and cores (and the GPU, for a CUDA device), torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    out = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if device is not None and torch.device(device).type == "cuda":
        out = f"{torch.cuda.get_device_name(device)}; {out}"
    return out


def print_machine(device: str | torch.device | None = None, **extra: Any) -> str:
    """Print (to stderr, so stdout stays the results) and return the machine line."""
    line = "machine: " + machine(device) + "".join(f"; {k} {v}" for k, v in extra.items())
    print(line, file=sys.stderr, flush=True)
    return line


def sync(device: str | torch.device | None) -> None:
    """Wait for the device's queue, so that a clock read covers the work queued before it."""
    if device is None:
        return
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class stopwatch:  # noqa: N801 - used like a function: t = stopwatch(); ...; t()
    """Seconds since it was started; each read waits for `device` first (CUDA)."""

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = device
        sync(device)
        self.start = time.perf_counter()

    def __call__(self) -> float:
        sync(self.device)
        return time.perf_counter() - self.start


def timed(fn: Callable[..., Any], log: list[tuple[float, Any]],
          device: str | torch.device | None = None) -> Callable[..., Any]:
    """`fn`, appending (seconds, result) to `log` at each call (for a peer's internals)."""
    def wrapper(*a: Any, **kw: Any) -> Any:
        t = stopwatch(device)
        out = fn(*a, **kw)
        log.append((t(), out))
        return out
    return wrapper


def no_nan(x: Any) -> Any:
    """NaN (no samples) as null: strict JSON has no NaN."""
    if isinstance(x, dict):
        return {k: no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [no_nan(v) for v in x]
    return None if isinstance(x, float) and x != x else x


def emit(result: Any, out: str | Path | None = None) -> None:
    """The final line of stdout: the results as one JSON line; also written to `out`."""
    result = no_nan(result)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(result, ensure_ascii=False), flush=True)


# -- the tokenizer benchmarks ----------------------------------------------------------------


def documents() -> list[str]:
    """KJV + Python docs (~15 MB) cut at blank lines into ~64K-character documents, so that
    both trainers/encoders get the same, parallelizable units."""
    from llmlab.data.corpora import kjv_text, pydocs_text

    text = kjv_text() + "\n\n" + pydocs_text()
    docs, start = [], 0
    while start < len(text):
        cut = text.find("\n\n", start + DOC_CHARS)
        end = len(text) if cut < 0 else cut + 2
        docs.append(text[start:end])
        start = end
    return docs


def run_worker(script: str, args: list[str], threads: int) -> dict:
    """Run ``script --worker ...`` in a fresh process limited to ``threads`` threads."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="true" if threads > 1 else "false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, script, "--worker", *args], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
