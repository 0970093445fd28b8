"""SmolLM2 reranking on the Python-docs labeled sets: which relevance score a 135M model can
carry out, and how much of it to mix with the first stage.

For every query, hybrid (RRF) retrieves 30 chunks; SmolLM2 scores the first 10 with each
scorer, in one padded bf16 forward per scorer:
  upr       mean log p(query | passage), UPR's plain-text prompt (the default scorer)
  yesno     logit(Yes) - logit(No), chat prompt, question first (shared prefix)
  yesno_pf  the session-1 prompt (passage first), as log P(Yes) and as Yes - No
The mix weight is picked on the dev set (howto) and applied unchanged to the test set
(tutorial), so the test figures are not tuned on their own labels. Scoring runs bf16 on
the CPU with `--threads` threads.

    python benchmarks/rag_rerank.py [--dev-queries 20] [--signals runs/rerank]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import emit, print_machine, stopwatch

from llmlab.rag.embed import get_embedder
from llmlab.rag.evaluate import build_pydocs_set, doc_ranking, load_qrels, score_runs
from llmlab.rag.pipeline import RagIndex
from llmlab.rag.rerank import (
    JUDGE_ASK,
    JUDGE_SYSTEM,
    Batch,
    LLMReranker,
    _chat,
    interpolate,
    rank_scores,
)

TOP, DEPTH = 10, 30
WEIGHTS = [round(w, 2) for w in np.arange(0, 1.01, 0.1)]


def judge_pf(rr: LLMReranker, query: str, passages: list[str]) -> Batch:
    head = rr._enc(_chat([("system", JUDGE_SYSTEM)], gen=False), special=True)
    head += rr._enc("<|im_start|>user\n", special=True) + rr._enc("Passage:\n")
    q = rr._enc(" ".join(query.split()))
    mid = rr._enc("\n\nQuestion: ")
    tail = rr._enc(f"\n\n{JUDGE_ASK}") + rr._enc("<|im_end|>\n<|im_start|>assistant\n",
                                                 special=True)
    rows = [rr._passage(p) + mid + q + tail for p in passages]
    spans = [(len(r) - len(tail) - len(q), len(r) - len(tail)) for r in rows]
    return Batch(head, rows, spans)


def collect(subdir: str, n_queries: int, rr: LLMReranker, tmp: Path, scorers: list[str],
            cache: Path | None) -> dict:
    """Scores per query; with `cache` (JSONL) each query is saved as it completes and a
    rerun resumes. Queries run in an interleaved order (0, n/2, n/4, 3n/4, ...), so a
    partial run is an even sample of the set."""
    docs, qpath = build_pydocs_set(tmp / subdir, subdirs=(subdir,))
    qrels = load_qrels(qpath)
    if n_queries and n_queries < len(qrels):  # an even spread over the whole set
        qrels = [qrels[int(i * len(qrels) / n_queries)] for i in range(n_queries)]
    done: dict[str, dict] = {}
    if cache and cache.exists():
        done = {r["query"]: r for r in map(json.loads, cache.read_text().splitlines())}
    idx = None
    out = []
    for i in interleaved(len(qrels)):
        q = qrels[i]
        if q.query in done and all(k in done[q.query]["secs"] for k in scorers):
            out.append(done[q.query])
            continue
        if idx is None:
            idx = RagIndex.create(tmp / f"idx-{subdir}", get_embedder("onnx"))
            idx.index([docs], 256, 32, progress=False)
        hits = idx.retrieve(q.query, "hybrid", DEPTH, with_cosine=False)
        texts = [h.chunk.text for h in hits[:TOP]]
        row: dict = {"query": q.query, "relevant": sorted(q.relevant),
                     "hits": [[h.chunk.doc_id, h.chunk.source] for h in hits],
                     "first": [h.score for h in hits], "secs": {}}
        builds = {"upr": rr.upr_batch, "yesno": rr.yesno_batch,
                  "pf": lambda qq, pp: judge_pf(rr, qq, pp)}
        for name in scorers:
            t = stopwatch()
            span, yn = rr.forward(builds[name](q.query, texts))
            row["secs"][name] = t()
            if name == "upr":
                row["upr"] = span.tolist()
            elif name == "yesno":
                row["yesno"] = (yn[:, 0] - yn[:, 1]).tolist()
            else:
                row["yesno_pf"] = (yn[:, 0] - yn[:, 1]).tolist()
                row["logp_yes_pf"] = yn[:, 0].tolist()
                row["upr_in_judge"] = span.tolist()
        out.append(row)
        if cache:
            with open(cache, "a") as f:
                f.write(json.dumps(row) + "\n")
        print(f"{subdir} {len(out)}/{len(qrels)} " + " ".join(
            f"{k} {v:.1f}s" for k, v in row["secs"].items()), flush=True)
    return {"subdir": subdir, "rows": out}


def interleaved(n: int) -> list[int]:
    """0, n/2, n/4, 3n/4, n/8, ...: every prefix is spread over the whole range."""
    order, seen, step = [], set(), n
    while len(order) < n:
        for j in range(0, n, max(step, 1)):
            if j not in seen:
                seen.add(j)
                order.append(j)
        step //= 2
    return order


class _C:  # a chunk as doc_ranking reads it
    def __init__(self, doc_id: str, source: str) -> None:
        self.chunk = self
        self.doc_id, self.source = doc_id, source


def metrics(rows: list[dict], signal: str | None, w: float, form: str = "rank") -> dict:
    runs, qrels = [], []
    for r in rows:
        hits = [_C(*h) for h in r["hits"]]
        if signal is not None and w > 0:
            s = np.asarray(r[signal], dtype=np.float64)
            if form == "rank":  # both as 1 - rank / n
                mix = (1 - w) * rank_scores(-np.arange(len(s))) + w * rank_scores(s)
            else:  # what LLMReranker.rerank does: min-max of raw scores, first = RRF
                mix = interpolate(s, w, r["first"][: len(s)])
            order = np.argsort(-mix, kind="stable")
            hits = [hits[i] for i in order] + hits[len(s):]
        rel = set(r["relevant"])
        runs.append(doc_ranking(hits, rel)[:10])
        qrels.append(type("Q", (), {"relevant": rel})())
    return {k: round(v, 4) for k, v in score_runs(runs, qrels, 10).items()}


def analyse(data: dict) -> dict:
    dev, test = data["dev"]["rows"], data["test"]["rows"]
    report: dict = {"n_dev": len(dev), "n_test": len(test),
                    "hybrid": {"dev": metrics(dev, None, 0), "test": metrics(test, None, 0)}}
    for sig in ("upr", "yesno", "yesno_pf", "logp_yes_pf", "upr_in_judge"):
        if sig not in dev[0]:
            continue
        for form in ("rank", "minmax"):
            grid = {w: metrics(dev, sig, w, form) for w in WEIGHTS}
            best = max(WEIGHTS, key=lambda w: (grid[w]["ndcg@10"], -w))
            report[f"{sig}/{form}"] = {
                "dev_ndcg_by_weight": {w: grid[w]["ndcg@10"] for w in WEIGHTS},
                "alone_dev": grid[1.0], "best_dev_weight": best}
            if sig in test[0]:
                report[f"{sig}/{form}"].update(alone_test=metrics(test, sig, 1.0, form),
                                               mixed_test=metrics(test, sig, best, form))
    for name in ("upr", "yesno", "pf"):
        secs = [r["secs"][name] for r in dev + test if name in r["secs"]]
        report[f"secs_per_query/{name}"] = {"p50": round(float(np.median(secs)), 2),
                                            "p95": round(float(np.percentile(secs, 95)), 2)}
    return report


def latency(rr: LLMReranker, subdir: str, n: int, tmp: Path) -> dict:
    """Seconds to rerank TOP candidates of one query, bf16 vs fp32, alternating."""
    docs, qpath = build_pydocs_set(tmp / f"lat-{subdir}", subdirs=(subdir,))
    qrels = load_qrels(qpath)
    idx = RagIndex.create(tmp / f"lat-idx-{subdir}", get_embedder("onnx"))
    idx.index([docs], 256, 32, progress=False)
    times: dict[str, list[float]] = {}
    for q in [qrels[int(i * len(qrels) / n)] for i in range(n)]:
        texts = [h.chunk.text for h in idx.retrieve(q.query, "hybrid", TOP,
                                                     with_cosine=False)]
        for scorer in ("upr", "yesno"):
            for bf16 in (True, False):
                rr.scorer, rr.bf16 = scorer, bf16
                t = stopwatch()
                rr.rerank(q.query, texts)
                key = f"{scorer}/{'bf16' if bf16 else 'fp32'}"
                times.setdefault(key, []).append(t())
    rr.scorer, rr.bf16 = "upr", True
    return {k: {"median_s": round(float(np.median(v)), 2), "max_s": round(max(v), 2)}
            for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dev", default="howto")
    ap.add_argument("--dev-queries", type=int, default=20)
    ap.add_argument("--test", default="tutorial")
    ap.add_argument("--test-queries", type=int, default=0, help="0: all")
    ap.add_argument("--dev-scorers", nargs="+", default=["upr", "yesno", "pf"])
    ap.add_argument("--test-scorers", nargs="+", default=["upr", "yesno"])
    ap.add_argument("--signals", default=None,
                    help="directory caching the scores per query (a rerun resumes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency", type=int, default=0,
                    help="only time reranking this many queries (bf16 vs fp32)")
    args = ap.parse_args()
    print_machine()
    torch.set_num_threads(args.threads)
    cache = Path(args.signals) if args.signals else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    rr = LLMReranker()
    tmp = Path(tempfile.mkdtemp(prefix="rag-rerank-"))
    if args.latency:
        emit({"threads": args.threads, "candidates": TOP,
              **latency(rr, args.test, args.latency, tmp)})
        return
    data = {"dev": collect(args.dev, args.dev_queries, rr, tmp, args.dev_scorers,
                           cache and cache / f"{args.dev}.jsonl"),
            "test": collect(args.test, args.test_queries, rr, tmp, args.test_scorers,
                            cache and cache / f"{args.test}.jsonl")}
    emit(analyse(data))


if __name__ == "__main__":
    main()
