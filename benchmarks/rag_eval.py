"""RAG quality on the Python-docs set: BM25 / dense / hybrid / hybrid+rerank side by side,
ONNX-int8 vs torch MiniLM at equal quality, answer citation rate and the refusal gate.

    python benchmarks/rag_eval.py [--subdir tutorial] [--rerank-queries 40] [--answers 20]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _common import emit, print_machine, stopwatch

from llmlab.rag.answer import MIN_COSINE, answer
from llmlab.rag.embed import get_embedder
from llmlab.rag.evaluate import build_pydocs_set, evaluate, format_table, load_qrels
from llmlab.rag.pipeline import RagIndex
from llmlab.rag.rerank import LLMReranker

OFF_TOPIC = [
    "What is the boiling point of liquid nitrogen?", "Who painted the Mona Lisa?",
    "How many moons does Jupiter have?", "What is the capital of Mongolia?",
    "Recipe for banana bread", "Who won the 1998 football world cup?",
    "How do whales sleep?", "What causes the northern lights?",
    "Best hiking trails in Patagonia", "How tall is Mount Kilimanjaro?",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subdir", default="tutorial")
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--rerank-queries", type=int, default=40)
    ap.add_argument("--answers", type=int, default=20)
    args = ap.parse_args()
    print_machine()
    tmp = Path(tempfile.mkdtemp(prefix="rag-eval-"))
    docs, qpath = build_pydocs_set(tmp / "set", subdirs=(args.subdir,))
    qrels = load_qrels(qpath)
    report: dict = {"set": f"pydocs/{args.subdir}", "queries": len(qrels)}
    idx = {}
    for backend in ("onnx", "torch"):
        emb = get_embedder(backend)
        t = stopwatch()
        idx[backend] = RagIndex.create(tmp / f"idx-{backend}", emb)
        st = idx[backend].index([docs], args.chunk_size, 32, progress=False)
        report[f"index_s_{backend}"] = round(t(), 1)
        report["chunks"] = st.chunks_added
        res = evaluate(idx[backend], qrels, ("bm25", "dense", "hybrid"), 10, progress=False)
        report[f"metrics_{backend}"] = res
        print(f"== {backend} embedder ({report[f'index_s_{backend}']} s to index)")
        print(format_table(res), flush=True)
    # Rerank is ~1 s per candidate batch on 2 cores: a prefix of the queries, peers on the same.
    sub = qrels[: args.rerank_queries]
    rr = LLMReranker()
    t = stopwatch()
    res = evaluate(idx["onnx"], sub, ("hybrid",), 10, reranker=rr, progress=False)
    report["rerank_s_per_query"] = round(t() / len(sub), 2)
    report["metrics_rerank_subset"] = res
    print(f"== first {len(sub)} queries, rerank top 10 by SmolLM2 (UPR, mixed with hybrid)")
    print(format_table(res), flush=True)
    # Answers: citation rate and correctness (a cited source is the labeled section).
    cited = correct = refused = 0
    best_in, best_off = [], []
    step = max(1, len(qrels) // args.answers)
    for q in qrels[::step][: args.answers]:
        question = f"Explain {q.query.lower()} in Python."
        hits = idx["onnx"].retrieve(question, "hybrid", 3)
        best_in.append(max(h.cosine for h in hits))
        a = answer(question, hits)
        refused += a.refused
        cited += bool(a.citations)
        correct += any(hits[n - 1].chunk.source in q.relevant for n, _ in a.citations)
    for q in OFF_TOPIC:
        best_off.append(max(h.cosine for h in idx["onnx"].retrieve(q, "hybrid", 3)))
    n = min(args.answers, len(qrels[::step]))
    report["answers"] = {
        "n": n, "cited": cited, "cited_labeled_section": correct, "refused": refused,
        "best_cosine_in_domain": [float(np.min(best_in)), float(np.median(best_in))],
        "best_cosine_off_topic": [float(np.median(best_off)), float(np.max(best_off))],
        "off_topic_refused_by_gate": int(sum(b < MIN_COSINE for b in best_off)),
        "in_domain_refused_by_gate": int(sum(b < MIN_COSINE for b in best_in)),
    }
    emit(report)


if __name__ == "__main__":
    main()
