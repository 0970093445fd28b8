"""Session-wide services: a throwaway PostgreSQL + pgvector for the server-store tests.

`scripts/services.sh` starts one (installing it first if needed) unless LLMLAB_PG_DSN already
points at a server, so the README's single test command exercises the real server store."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist each worker would start one torch thread per core: on 2 cores, two
    # workers would run four threads that spin against each other. Share the cores instead.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session", autouse=True)
def pgvector_server() -> Iterator[None]:
    if os.environ.get("LLMLAB_PG_DSN") or os.environ.get("LLMLAB_NO_PG"):
        yield
        return
    r = subprocess.run(["bash", str(ROOT / "scripts" / "services.sh")], capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        # The store tests then skip with their own message; say why here too.
        print(f"\nservices.sh failed (pgvector tests will skip):\n{r.stderr[-2000:]}")
        yield
        return
    env = {}
    for line in r.stdout.splitlines():
        if line.startswith("export "):
            key, _, val = line[len("export "):].partition("=")
            env[key] = shlex.split(val)[0]
    os.environ.update(env)
    try:
        yield
    finally:
        data = env.get("LLMLAB_PG_DATA")
        if data:
            subprocess.run(["bash", str(ROOT / "scripts" / "services.sh"), "stop", data],
                           capture_output=True, timeout=120)
        for k in env:
            os.environ.pop(k, None)
