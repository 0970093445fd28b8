"""The training lab on this machine: how soon a page's run shows its first loss point, how
long the runs take, and how the pages' endpoints answer while a run trains, side by side with
the same endpoints on an idle server (the peer here is the idle server itself).

    PYTHONPATH=. python benchmarks/lab_runs.py [--requests 8] [--pretrain-steps 2400]

It starts a real `llmlab serve` (loopback, a temporary runs dir), then:
1. idle: N requests each to /api/attention, /api/decode/next, /api/next_token (when the
   server has it) and a 16-token /v1/chat/completions; p50/p95 latencies;
2. starts the micro pretraining from the API, as the page does; time to the first loss
   record on the SSE stream, to each sample, and to the end; the same latencies meanwhile.
Ends with one JSON line. The LoRA page's demo has its own script (lora_live.py)."""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks._common import emit, print_machine
from benchmarks._server import start_server, stop_server, wait_ready

FRESH = itertools.count()  # numbers no earlier attention request used
TEXT = "The animal didn't cross the street because it was too tired."
CALLS = {
    "attention": ("/api/attention", {"text": TEXT, "layer": 3, "head": 0}),
    "decode_next": ("/api/decode/next", {"text": "The capital of France is", "k": 10}),
    "next_token": ("/api/next_token", {"text": TEXT, "models": ["smollm2"]}),
    "chat_16": ("/v1/chat/completions", {"messages": [{"role": "user", "content":
                "Name three colours."}], "max_tokens": 16, "temperature": 0}),
}


def latencies(url: str, n: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with httpx.Client(base_url=url, timeout=120) as c:
        for name, (path, body) in CALLS.items():
            times = []
            for _ in range(n):
                b = dict(body)
                if name == "attention":  # a new text each time: the attention cache would hit
                    b["text"] = f"{TEXT} ({next(FRESH)})"
                t0 = time.perf_counter()
                r = c.post(path, json=b)
                if r.status_code == 404 and name == "next_token":
                    break  # a server without the next-token page
                r.raise_for_status()
                times.append(time.perf_counter() - t0)
            if times:
                q = statistics.quantiles(times, n=20) if len(times) > 1 else times * 19
                out[name] = {"p50_ms": 1000 * statistics.median(times),
                             "p95_ms": 1000 * q[18], "n": len(times)}
    return out


def follow(url: str, run_id: str, t0: float, marks: dict[str, Any]) -> None:
    """Record when each kind of event first arrives, and every sample with its time."""
    with httpx.stream("GET", f"{url}/api/runs/{run_id}/events", timeout=None) as r:
        event = ""
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                t = time.perf_counter() - t0
                if event == "metrics" and "first_loss_s" not in marks:
                    marks["first_loss_s"] = t
                    marks["first_loss"] = data["loss"]
                if event == "metrics":
                    marks["last_loss"] = data["loss"]
                    marks["last_val"] = data.get("val_loss", marks.get("last_val"))
                if event == "sample":
                    marks.setdefault("samples", []).append(
                        {"s": round(t, 1), "step": data["step"], "text": data.get("text")})
                if event == "end":
                    marks["end_s"], marks["status"] = t, data["status"]
                    return


def run(url: str, kind: str, options: dict[str, Any], n: int | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/api/runs", json={"kind": kind, "options": options}, timeout=120)
    r.raise_for_status()
    marks: dict[str, Any] = {"id": r.json()["id"], "options": options}
    t = threading.Thread(target=follow, args=(url, marks["id"], t0, marks), daemon=True)
    t.start()
    if n:
        while "first_loss_s" not in marks and t.is_alive():
            time.sleep(0.2)
        marks["during"] = latencies(url, n)
    t.join()
    return marks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--pretrain-steps", type=int, default=2400)
    ap.add_argument("--run-threads", type=int, default=1)
    a = ap.parse_args()
    print_machine()
    runs = Path(tempfile.mkdtemp(prefix="lab-runs-"))
    log = runs / "server.log"
    proc, url = start_server(log, ["--runs-dir", str(runs / "runs"),
                                   "--run-threads", str(a.run_threads)])
    try:
        why = wait_ready(proc, url, 600)
        assert why is None, why
        idle = latencies(url, a.requests)
        print("idle:", json.dumps(idle))
        pre = run(url, "pretrain", {"preset": "micro", "max_steps": a.pretrain_steps}, a.requests)
        print("pretrain:", json.dumps({k: v for k, v in pre.items() if k != "samples"}))
        for s in pre.get("samples", []):
            print(f"  sample at {s['s']:6.1f} s, step {s['step']:5d}: {s['text']!r}")
        emit({"idle": idle, "pretrain": pre, "run_threads": a.run_threads})
    finally:
        print("server:", stop_server(proc, 60, log)[0])


if __name__ == "__main__":
    main()
