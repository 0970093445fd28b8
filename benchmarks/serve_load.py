"""Load probe for `llmlab serve`: N concurrent clients for D seconds against a server this
script starts on 127.0.0.1 (a free port; loopback only), mixing the requests a class would send.

    PYTHONPATH=. python benchmarks/serve_load.py [--clients 32] [--seconds 60] [--json]

Each client loops over a weighted mix: non-streamed and streamed /v1/chat/completions (8-16
tokens), /v1/embeddings, /api/tokenize, /api/decode/next and a few GETs; bad inputs that must
get a 4xx (broken JSON, seed 2**64, unknown model, ...); and, a bounded number of times, a
stream abandoned after its first token and a non-streamed chat abandoned after 1 s.

It measures requests by status class, chat latency (p50/p95; time to first token for
streams), the server's RSS (at ready, peak, end of load, after settling; sampled every
second), whether abandoned requests gave their batch slots back, and whether the server stops
on SIGTERM. Exit status 1 when any request got a 5xx, an error inside a 200 stream, a status
of the wrong class, a transport error or no answer within --timeout; or when the server
leaked batch slots, logged a traceback or had to be killed. 2 when it never became ready.
(#27: "32 clients x 60 s, 0 x 5xx, bounded RSS".)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import emit, print_machine, stopwatch
from _server import log_errors, rss_mb, settle, start_server, stop_server, wait_ready

PROMPTS = ["Say hello.", "What is the capital of France?", "Name three colours.",
           "Write a haiku about the sea.", "What is 2 + 2?",
           "A <script>alert(1)</script> token, and an emoji: 🙂"]
SENTENCES = ["The cat sat on the mat.", "Attention is all you need.",
             "Paris is the capital of France.", "naïve café déjà vu 🙂",
             "def f(x):\n    return x * 2"]
# A prompt that keeps generating well past 1 s, so the disconnect really happens mid-request.
LONG_PROMPT = "Count from 1 to 300, one number per line."


@dataclass
class Req:
    kind: str
    method: str
    path: str
    body: Any = None  # JSON-encoded by httpx
    raw: bytes | None = None  # sent as is (broken JSON, escapes httpx would not write)
    mode: str = "plain"  # plain | stream | abandon (stream, leave early) | disconnect
    expect: str = "2xx"  # 2xx | 4xx

    def describe(self) -> str:
        body = self.raw.decode() if self.raw is not None else json.dumps(self.body)
        return f"{self.method} {self.path} {body if self.body or self.raw else ''}".strip()


@dataclass
class Stats:
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, class)
    lat: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    ttft: list[float] = field(default_factory=list)  # streamed chat: first content chunk
    problems: list[dict[str, Any]] = field(default_factory=list)  # first few, for the report
    in_flight: int = 0


# -- the request mix ------------------------------------------------------------------------


def chat_body(rng: random.Random, model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
            "max_tokens": rng.randint(8, 16), "temperature": rng.choice([0.0, 0.7, 1.0]),
            "seed": rng.randrange(2**31), **extra}


def make_request(kind: str, rng: random.Random, ids: dict[str, str]) -> Req:
    chat, emb = "/v1/chat/completions", "/v1/embeddings"
    m = ids["chat"]
    if kind == "chat":
        return Req(kind, "POST", chat, chat_body(rng, m))
    if kind == "chat_stream":
        return Req(kind, "POST", chat, chat_body(rng, m, stream=True), mode="stream")
    if kind == "chat_json":
        return Req(kind, "POST", chat, chat_body(rng, m, response_format={"type": "json_object"}))
    if kind == "embeddings":
        inp: Any = rng.choice(SENTENCES)
        if rng.random() < 0.5:
            inp = rng.sample(SENTENCES, rng.randint(1, 4))
        fmt = rng.choice(["float", "base64"])
        return Req(kind, "POST", emb, {"model": ids["embed"], "input": inp, "encoding_format": fmt})
    if kind == "tokenize":
        tok = rng.choice(["smollm2", "gpt2", "cl100k"])
        return Req(kind, "POST", "/api/tokenize", {"text": rng.choice(SENTENCES), "tokenizer": tok})
    if kind == "decode_next":
        return Req(kind, "POST", "/api/decode/next", {"text": rng.choice(SENTENCES), "k": 5})
    if kind == "get":
        return Req(kind, "GET", rng.choice(["/healthz", "/v1/models", "/api/lora/counts"]))
    if kind == "abandon_stream":
        body = chat_body(rng, m, stream=True, max_tokens=64)
        return Req(kind, "POST", chat, body, mode="abandon")
    if kind == "disconnect":
        body = chat_body(rng, m, max_tokens=256, temperature=0.0)
        body["messages"][0]["content"] = LONG_PROMPT
        return Req(kind, "POST", chat, body, mode="disconnect")
    # Bad inputs: each must be refused with a 4xx, never a 5xx or a 200.
    if kind == "bad_json":
        return Req(kind, "POST", chat, raw=b'{"messages": [{"role": "user", "content": "hi"}',
                   expect="4xx")
    if kind == "bad_seed":
        return Req(kind, "POST", chat, chat_body(rng, m, seed=2**64), expect="4xx")
    if kind == "bad_model":
        return Req(kind, "POST", chat, chat_body(rng, "no-such-model"), expect="4xx")
    if kind == "bad_max_tokens":
        return Req(kind, "POST", chat, chat_body(rng, m, max_tokens=10**6), expect="4xx")
    if kind == "bad_surrogate":
        # json.dumps escapes the lone surrogate as \ud800; httpx's own encoder would refuse it.
        raw = json.dumps(chat_body(rng, m) | {"messages": [{"role": "user", "content": "a\ud800"}]})
        return Req(kind, "POST", chat, raw=raw.encode(), expect="4xx")
    if kind == "bad_embed_model":
        return Req(kind, "POST", emb, {"model": "no-such-model", "input": "x"}, expect="4xx")
    if kind == "bad_tokenizer":
        return Req(kind, "POST", "/api/tokenize", {"text": "x", "tokenizer": "no-such-tok"},
                   expect="4xx")
    raise ValueError(kind)


# Weights of the mix; chat dominates, as in a class. Bad inputs are cheap, so a fair share.
WEIGHTS = {"chat": 22, "chat_stream": 22, "chat_json": 4, "embeddings": 12, "tokenize": 10,
           "decode_next": 5, "get": 5, "abandon_stream": 4, "disconnect": 3, "bad_json": 2,
           "bad_seed": 2, "bad_model": 2, "bad_max_tokens": 2, "bad_surrogate": 2,
           "bad_embed_model": 1, "bad_tokenizer": 1}
# Abandoned requests are bounded in number (per client, over the run): they test cleanup,
# and too many would turn the probe into a cancellation test.
CAPPED = ("abandon_stream", "disconnect")
CHAT_KINDS = ("chat", "chat_stream", "chat_json")


# -- running one request --------------------------------------------------------------------


async def send(c: httpx.AsyncClient, req: Req, stats: Stats) -> tuple[str, int | None, str]:
    """(outcome, status, detail): outcome is the status's class or abandoned / stream_error /
    error; a TimeoutError (the hang bound) propagates to the caller."""
    kw: dict[str, Any] = {}
    if req.raw is not None:
        kw = {"content": req.raw, "headers": {"content-type": "application/json"}}
    elif req.body is not None:
        kw = {"json": req.body}
    if req.mode == "disconnect":
        try:
            # Cancelling the request closes its connection: the server sees the client leave.
            r = await asyncio.wait_for(c.request(req.method, req.path, **kw), 1.0)
        except TimeoutError:
            return "abandoned", None, ""
        return f"{r.status_code // 100}xx", r.status_code, r.text[:300]
    if req.mode == "plain":
        r = await c.request(req.method, req.path, **kw)
        return f"{r.status_code // 100}xx", r.status_code, r.text[:300]
    t0 = stopwatch()
    async with c.stream(req.method, req.path, **kw) as r:
        if r.status_code != 200:
            await r.aread()
            return f"{r.status_code // 100}xx", r.status_code, r.text[:300]
        done, first = False, True
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                continue
            obj = json.loads(data)
            if "error" in obj:  # the 200 was already sent; the server reports errors inline
                return "stream_error", 200, data[:300]
            delta = obj["choices"][0]["delta"]
            if delta.get("content"):
                if first:
                    stats.ttft.append(t0())
                    first = False
                if req.mode == "abandon":  # leaving the block closes the connection mid-stream
                    return "abandoned", 200, ""
        if not done:
            return "stream_error", 200, "stream ended without data: [DONE]"
        return "2xx", 200, ""


async def one(c: httpx.AsyncClient, req: Req, stats: Stats, timeout: float) -> None:
    t0 = stopwatch()
    stats.in_flight += 1
    try:
        # The hang bound: httpx's timeouts are per read, so a slow trickle could outlast them.
        outcome, status, detail = await asyncio.wait_for(send(c, req, stats), timeout)
    except TimeoutError:
        outcome, status, detail = "timeout", None, f"no complete answer within {timeout:.0f} s"
    except httpx.HTTPError as e:
        outcome, status, detail = "error", None, f"{type(e).__name__}: {e}"
    except (json.JSONDecodeError, KeyError, IndexError) as e:  # a malformed SSE chunk
        outcome, status, detail = "stream_error", 200, f"{type(e).__name__}: {e}"
    finally:
        stats.in_flight -= 1
    dt = t0()
    stats.counts[(req.kind, outcome)] += 1
    if outcome in ("2xx", "4xx", "5xx"):
        stats.lat[req.kind].append(dt)
    wrong_class = outcome in ("2xx", "4xx") and outcome != req.expect
    if (outcome not in ("2xx", "4xx", "abandoned") or wrong_class) and len(stats.problems) < 20:
        stats.problems.append({"kind": req.kind, "outcome": outcome, "status": status,
                               "seconds": round(dt, 2), "request": req.describe(),
                               "response": detail})


async def client(url: str, until: float, stats: Stats, seed: int, ids: dict[str, str],
                 timeout: float, caps: Counter[str], first: list[str]) -> None:
    rng = random.Random(seed)
    kinds = list(WEIGHTS)
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as c:
        while time.monotonic() < until:
            # The clients share out one of every kind first, so a short run still covers all.
            kind = first.pop() if first else rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0]
            if kind in CAPPED:
                if caps[kind] <= 0:
                    continue
                caps[kind] -= 1
            await one(c, make_request(kind, rng, ids), stats, timeout)


# -- the run --------------------------------------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if len(xs) > 1 else xs[0]


async def load(a: argparse.Namespace, url: str, pid: int, ids: dict[str, str]) -> dict[str, Any]:
    stats = Stats()
    trace: list[float] = []  # RSS (MB), once a second
    caps: Counter[str] = Counter({k: 2 * a.clients for k in CAPPED})
    first = list(WEIGHTS)
    random.Random(a.seed).shuffle(first)
    t0 = time.monotonic()
    until = t0 + a.seconds
    rss_start = rss_mb(pid)
    stop = asyncio.Event()

    async def watch() -> None:
        last = t0
        while not stop.is_set():
            trace.append(rss_mb(pid))
            now = time.monotonic()
            if now - last >= a.progress:
                last = now
                by: Counter[str] = Counter()
                for (_, outcome), n in stats.counts.items():
                    by[outcome] += n
                print(f"[{now - t0:5.0f} s] {sum(by.values()):5d} done  2xx {by['2xx']}  "
                      f"4xx {by['4xx']}  5xx {by['5xx']}  err {by['error']}  "
                      f"timeout {by['timeout']}  in flight {stats.in_flight}  "
                      f"RSS {trace[-1]:.0f} MB", file=sys.stderr, flush=True)
            with contextlib.suppress(TimeoutError):  # a sample a second, until stopped
                await asyncio.wait_for(stop.wait(), 1.0)

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(client(url, until, stats, a.seed + i, ids, a.timeout, caps, first)
                           for i in range(a.clients)))
    wall = time.monotonic() - t0
    rss_end = rss_mb(pid)
    stop.set()
    await watcher
    gen = await settle(url, 30)
    await asyncio.sleep(2)  # let the periodic malloc trim and GC catch up before the last read
    rss_settled = rss_mb(pid)
    n = len(trace)
    fifths = [trace[min(n - 1, n * k // 5)] for k in range(1, 6)] if trace else []
    return {"stats": stats, "wall_s": wall, "generation": gen,
            "rss_mb": {"start": rss_start, "peak": max(trace, default=rss_end),
                       "end_of_load": rss_end, "settled": rss_settled, "fifths": fifths}}


def report(a: argparse.Namespace, res: dict[str, Any], stopped: str, clean: bool,
           log: Path) -> tuple[dict, bool]:
    stats: Stats = res["stats"]
    classes = ["2xx", "4xx", "5xx", "abandoned", "stream_error", "error", "timeout"]
    kinds = sorted({k for k, _ in stats.counts}, key=list(WEIGHTS).index)
    print(f"\n{a.clients} clients x {a.seconds:.0f} s (ran {res['wall_s']:.1f} s), model {a.model}")
    head = f"{'kind':16s} {'expect':>6s} " + " ".join(f"{c[:9]:>9s}" for c in classes)
    print(head + f" {'p50 s':>7s} {'p95 s':>7s} {'max s':>7s}")
    per_kind: dict[str, Any] = {}
    for k in kinds:
        row = {c: stats.counts[(k, c)] for c in classes}
        lat = stats.lat[k]
        p50, p95 = pct(lat, 50), pct(lat, 95)
        mx = max(lat, default=float("nan"))
        per_kind[k] = {**row, "p50_s": p50, "p95_s": p95, "max_s": mx}
        expect = "4xx" if k.startswith("bad_") else "2xx"
        print(f"{k:16s} {expect:>6s} " + " ".join(f"{row[c]:9d}" for c in classes)
              + "".join(f" {x:7.2f}" if x == x else f" {'-':>7s}" for x in (p50, p95, mx)))
    total: Counter[str] = Counter()
    for (_, c), n in stats.counts.items():
        total[c] += n
    print(f"{'total':16s} {'':>6s} " + " ".join(f"{total[c]:9d}" for c in classes))
    chat_lat = [x for k in CHAT_KINDS for x in stats.lat[k]]
    print(f"\nchat latency (all chat kinds, n={len(chat_lat)}): p50 {pct(chat_lat, 50):.2f} s, "
          f"p95 {pct(chat_lat, 95):.2f} s; streamed time to first token: "
          f"p50 {pct(stats.ttft, 50):.2f} s, p95 {pct(stats.ttft, 95):.2f} s")
    rss = res["rss_mb"]
    print(f"server RSS: start {rss['start']:.0f} MB, peak {rss['peak']:.0f} MB, end of load "
          f"{rss['end_of_load']:.0f} MB, settled {rss['settled']:.0f} MB; at each fifth: "
          + " ".join(f"{m:.0f}" for m in rss["fifths"]))
    gen = res["generation"] or {}
    # Every abandoned request should show up as one cancelled row in the worker's counters.
    leaked = bool(gen) and (gen.get("rows", 0) or gen.get("waiting", 0))
    print(f"batching worker after the load: {gen or 'never started'}"
          + ("  <- slots not freed within 30 s" if leaked else "")
          + f"; abandoned by the probe: {total['abandoned']}")
    n_tb, first_tb = log_errors(log)
    print(f"server log ({log}): {n_tb} traceback(s)")
    print(f"server stop: {stopped}")

    wrong = sum(n for (k, c), n in stats.counts.items()
                if c in ("2xx", "4xx") and c != ("4xx" if k.startswith("bad_") else "2xx"))
    failures = {"5xx": total["5xx"], "timeout": total["timeout"], "error": total["error"],
                "stream_error": total["stream_error"], "wrong_class": wrong,
                "leaked_slots": int(bool(leaked)), "unclean_stop": int(not clean),
                "tracebacks": n_tb}
    failed = any(failures.values())
    if stats.problems:
        print("\nfirst problem requests:")
        for p in stats.problems[:10]:
            print(f"  {p['kind']}: {p['outcome']} {p['status']} after {p['seconds']} s\n"
                  f"    request:  {p['request'][:300]}\n    response: {p['response']}")
    if first_tb:
        print("\nfirst traceback in the server log:\n" + first_tb)
    any5 = "yes" if total["5xx"] else "no"
    bad = {k: v for k, v in failures.items() if v}
    print(f"\nany 5xx: {any5}.  {'FAIL: ' + json.dumps(bad) if failed else 'PASS'}")
    out = {"clients": a.clients, "seconds": a.seconds, "model": a.model,
           "wall_s": res["wall_s"], "by_kind": per_kind, "total": dict(total),
           "chat_p50_s": pct(chat_lat, 50), "chat_p95_s": pct(chat_lat, 95),
           "ttft_p50_s": pct(stats.ttft, 50), "ttft_p95_s": pct(stats.ttft, 95),
           "rss_mb": rss, "generation": gen, "server_stop": stopped,
           "any_5xx": bool(total["5xx"]), "failures": failures, "problems": stats.problems,
           "passed": not failed}
    return out, failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    ap.add_argument("--seconds", type=float, default=60, help="load duration (default 60)")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="the server's chat model")
    ap.add_argument("--timeout", type=float, default=120,
                    help="a request not answered in full by then counts as hung (default 120)")
    ap.add_argument("--ready-timeout", type=float, default=600,
                    help="bound on the start: models, RAG index (default 600)")
    ap.add_argument("--stop-timeout", type=float, default=40,
                    help="SIGKILL the server if SIGTERM has not stopped it by then (default 40)")
    ap.add_argument("--progress", type=float, default=5, help="seconds between progress lines")
    ap.add_argument("--seed", type=int, default=0, help="the request mix's random seed")
    ap.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                    help="passed to `llmlab serve` (repeatable: --server-arg=--no-int8)")
    ap.add_argument("--log", type=Path, help="server log file (default: a temp file)")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    a = ap.parse_args()

    log = a.log or Path(tempfile.mkstemp(prefix="serve_load_", suffix=".log")[1])
    print_machine()
    proc, url = start_server(log, ["--model", a.model, *a.server_arg])
    print(f"server pid {proc.pid} on {url}, log {log}", file=sys.stderr, flush=True)
    try:
        t0 = time.monotonic()
        why = wait_ready(proc, url, a.ready_timeout)
        if why:
            print(f"FAIL: {why}; server log tail:", file=sys.stderr)
            print("\n".join(log.read_text(errors="replace").splitlines()[-30:]), file=sys.stderr)
            return 2
        print(f"ready after {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        # The API's own model ids: the chat id stays the same whichever --model is served.
        listed = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]
        ids = {"chat": listed[0], "embed": listed[1]}
        res = asyncio.run(load(a, url, proc.pid, ids))
    finally:
        stopped, clean = stop_server(proc, a.stop_timeout, log)
    out, failed = report(a, res, stopped, clean, log)
    if a.json:
        emit(out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
