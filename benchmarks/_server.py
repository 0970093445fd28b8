"""Start, watch and stop an `llmlab serve` for the server benchmarks (serve_load, serve_soak):
loopback only, a free port, the log in a file."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # only loopback traffic, ever


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:  # the process is gone
        pass
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_server(log: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """`llmlab serve --host 127.0.0.1 --port FREE *extra`, its output into `log`."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "llmlab.server.cli", "serve", "--host", HOST, "--port",
           str(port), *extra]
    with log.open("wb") as f:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    return proc, f"http://{HOST}:{port}"


def wait_ready(proc: subprocess.Popen, url: str, bound: float) -> str | None:
    """None once /healthz says ready (models preloaded, RAG index built: it answers 200 with
    ready=false before that), else why not."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"server exited with {proc.returncode} before it was ready"
        try:
            if httpx.get(f"{url}/healthz", timeout=5).json().get("ready"):
                return None
        except (httpx.HTTPError, ValueError):
            pass  # not listening yet
        time.sleep(0.5)
    return f"not ready within {bound:.0f} s"


def stop_server(proc: subprocess.Popen, bound: float, log: Path) -> tuple[str, bool]:
    """SIGTERM (uvicorn's graceful shutdown), SIGKILL after `bound` s; (how it ended, clean)."""
    if proc.poll() is not None:
        return f"had already exited with {proc.returncode}", False
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=bound)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait(timeout=10)
        return f"ignored SIGTERM for {bound:.0f} s; SIGKILLed (exit {rc})", False
    # uvicorn re-raises the signal it caught once its shutdown is done, so a clean stop exits
    # with -SIGTERM; the lifespan's line says the app's shutdown (the batcher's close) ran.
    done = "Application shutdown complete" in log.read_text(errors="replace")
    how = f"exited {rc} {time.monotonic() - t0:.1f} s after SIGTERM"
    how += ", application shutdown complete" if done else ", no 'Application shutdown complete'"
    return how, rc in (0, -signal.SIGTERM) and done


def log_errors(log: Path) -> tuple[int, str]:
    """Tracebacks in the server log (unhandled errors, errors inside streams) and the first."""
    lines = log.read_text(errors="replace").splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback")]
    first = "\n".join(lines[max(0, starts[0] - 2) : starts[0] + 40]) if starts else ""
    return len(starts), first


async def settle(url: str, bound: float) -> dict[str, Any] | None:
    """The batching worker's counters once no row or waiting request is left (abandoned ones
    included), or the last ones seen when that takes longer than `bound` s."""
    gen: dict[str, Any] | None = None
    deadline = time.monotonic() + bound
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):  # busy or gone: retry
                gen = (await c.get("/healthz")).json().get("generation")
            if gen is not None and gen.get("rows") == 0 and gen.get("waiting") == 0:
                break
            await asyncio.sleep(0.5)
    return gen
