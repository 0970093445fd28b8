"""Starting a playground run through the API and waiting for it, as the lab's tests do."""

from __future__ import annotations

import time
from typing import Any

import httpx


def wait_run(url: str, run_id: str, timeout: float = 300) -> dict[str, Any]:
    """The run once it has ended; it must have finished."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = httpx.get(f"{url}/api/runs/{run_id}", timeout=30).json()
        if run["status"] not in ("running", "stopping"):
            assert run["status"] == "finished", run
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish in {timeout} s")


def finish(url: str, kind: str, options: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    """POST /api/runs, then wait for the run to finish."""
    r = httpx.post(f"{url}/api/runs", json={"kind": kind, "options": options}, timeout=60)
    assert r.status_code == 201, r.text
    return wait_run(url, r.json()["id"], timeout)
