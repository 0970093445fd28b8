"""Soak `llmlab serve`: N concurrent clients for T seconds mixing attention, RAG and chat.

    python benchmarks/serve_soak.py --clients 32 --seconds 60 [--url http://127.0.0.1:8000]

Without --url it starts its own server in a subprocess. Passes when no request got a 5xx
(503 from a missing RAG engine is counted separately) and the server's RSS stays bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
from _common import emit, print_machine, stopwatch
from _server import rss_mb, start_server, stop_server, wait_ready

SENTENCES = [
    "The cat sat on the mat.",
    "Attention is all you need.",
    "A <script>alert(1)</script> token.",
    "Paris is the capital of France.",
]


async def one(c: httpx.AsyncClient, kind: str) -> int:
    if kind == "attention":
        r = await c.post(
            "/api/attention",
            json={
                "text": random.choice(SENTENCES),
                "layer": random.randrange(30),
                "head": random.choice([0, 3, "all"]),
                "mode": random.choice(["native", "bidirectional"]),
            },
        )
    elif kind == "rag":
        async with c.stream(
            "POST", "/api/rag/query", json={"query": "How do I open a file?", "k": 3}
        ) as r:
            async for _ in r.aiter_bytes():
                pass
    else:
        async with c.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "Say hello"}],
                "max_tokens": 8,
                "stream": True,
            },
        ) as r:
            async for _ in r.aiter_bytes():
                pass
    return r.status_code


async def client(url: str, until: float, stats: dict) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        while time.time() < until:
            kind = random.choices(["attention", "rag", "chat"], [0.5, 0.2, 0.3])[0]
            t = stopwatch()
            try:
                code = await one(c, kind)
            except httpx.HTTPError as e:
                code = f"error:{type(e).__name__}"
            stats["lat"][kind].append(t())
            stats["codes"][(kind, code)] += 1


async def main_async(url: str, n: int, seconds: float, pid: int | None) -> int:
    stats = {"lat": defaultdict(list), "codes": Counter()}
    until = time.time() + seconds
    trace: list[float] = []  # RSS once a second

    async def watch() -> None:
        while time.time() < until and pid:
            trace.append(rss_mb(pid))
            await asyncio.sleep(1)

    start_rss = rss_mb(pid) if pid else float("nan")
    await asyncio.gather(watch(), *(client(url, until, stats) for _ in range(n)))
    end_rss = rss_mb(pid) if pid else float("nan")
    for kind, lat in sorted(stats["lat"].items()):
        q = statistics.quantiles(lat, n=20) if len(lat) > 1 else lat * 19
        print(
            f"{kind:10s} n={len(lat):4d} p50={statistics.median(lat):6.2f}s "
            f"p95={q[-1]:6.2f}s max={max(lat):6.2f}s"
        )
    print("status codes:", dict(stats["codes"]))
    if pid:
        peak = max(trace, default=end_rss)
        print(f"server RSS: start {start_rss:.0f} MB, peak {peak:.0f} MB, end {end_rss:.0f} MB")
        # Bounded means it levels off: the RSS at each fifth of the run.
        n = len(trace)
        marks = [trace[min(n - 1, n * k // 5)] for k in range(1, 6)] if trace else []
        print("RSS at each fifth of the run (MB):", " ".join(f"{m:.0f}" for m in marks))
    bad = {
        k: v
        for k, v in stats["codes"].items()
        if not isinstance(k[1], int) or (k[1] >= 500 and not (k[0] == "rag" and k[1] == 503))
    }
    print("FAIL" if bad else "PASS: no 5xx", bad or "")
    emit({"clients": n, "seconds": seconds, "passed": not bad,
          "codes": {f"{k} {c}": v for (k, c), v in stats["codes"].items()},
          "p50_s": {k: statistics.median(v) for k, v in stats["lat"].items()},
          "rss_mb": {"start": start_rss, "peak": max(trace, default=end_rss), "end": end_rss}})
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--pid", type=int, help="server pid, for RSS (with --url)")
    a = ap.parse_args()
    print_machine()
    proc = None
    url, pid = a.url, a.pid
    log = Path(tempfile.mkstemp(prefix="serve_soak_", suffix=".log")[1])
    if not url:
        proc, url = start_server(log, [])
        pid = proc.pid
        why = wait_ready(proc, url, 300)
        if why:
            print(f"FAIL: {why}; server log: {log}", file=sys.stderr)
            stop_server(proc, 30, log)
            return 2
    try:
        return asyncio.run(main_async(url, a.clients, a.seconds, pid))
    finally:
        if proc:
            stop_server(proc, 30, log)


if __name__ == "__main__":
    sys.exit(main())
