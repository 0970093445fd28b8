"""Query latency (p50/p95) of the RAG retrievers at 10k and 100k chunks, excluding the LLM,
with the peers they wrap side by side: raw bm25s, numpy brute force, FAISS flat and HNSW.

Synthetic chunks (Zipf-distributed words, random unit vectors) stand in for text here;
quality is measured on real text in rag_eval.py. The query vector is precomputed for all
rows; `embed query` is the MiniLM cost a dense/hybrid query adds on top.

    python benchmarks/rag_query.py [--sizes 10000 100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from _common import emit, print_machine, stopwatch

from llmlab.rag.chunk import Chunk
from llmlab.rag.fuse import rrf
from llmlab.rag.stores.local import LocalStore

DIM = 384


def corpus(n: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    vocab = [f"w{i}" for i in range(30_000)]
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    words = rng.choice(len(vocab), size=(n, 120), p=p)
    texts = [" ".join(vocab[j] for j in row) for row in words]
    # Clustered like real sentence embeddings (topics), not isotropic noise: isotropic
    # 384-d data has no low-dimensional structure for any ANN index to exploit.
    centers = rng.normal(size=(max(n // 100, 10), DIM))
    v = centers[rng.integers(0, len(centers), n)] + 0.6 * rng.normal(size=(n, DIM))
    v = v.astype(np.float32)
    return texts, v / np.linalg.norm(v, axis=1, keepdims=True)


def pct(times: list[float], res: dict[str, Any] | None = None, name: str = "") -> str:
    """p50/p95 in ms as printed; also recorded under `name` in `res` for the JSON line."""
    a = np.array(times) * 1000
    p50, p95 = float(np.percentile(a, 50)), float(np.percentile(a, 95))
    if res is not None:
        res[name] = {"p50_ms": p50, "p95_ms": p95}
    return f"p50 {p50:7.2f} ms  p95 {p95:7.2f} ms"


def latencies(fn, queries) -> list[float]:  # noqa: ANN001
    fn(queries[0])
    out = []
    for q in queries:
        t = stopwatch()
        fn(q)
        out.append(t())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    print_machine()
    rng = np.random.default_rng(0)
    from llmlab.rag.embed import get_embedder

    emb = get_embedder("onnx")
    qs_text = [f"how does w{rng.integers(1, 3000)} relate to w{rng.integers(1, 3000)}"
               for _ in range(args.queries)]
    res: dict[str, Any] = {"queries": args.queries}
    embed = pct(latencies(lambda q: emb.embed([q]), qs_text[:50]), res, "embed_query")
    print(f"embed query (MiniLM onnx): {embed}")
    res["sizes"] = {n: bench(n, rng, qs_text, args.queries) for n in args.sizes}
    emit(res)


def bench(n: int, rng: np.random.Generator, qs_text: list[str], n_q: int) -> dict[str, Any]:
    import bm25s
    import faiss

    from llmlab.rag.sparse import _stemmer

    texts, v = corpus(n, rng)
    qv = v[rng.integers(0, n, n_q)] + 0.1 * rng.normal(size=(n_q, DIM))
    qv = (qv / np.linalg.norm(qv, axis=1, keepdims=True)).astype(np.float32)
    store = LocalStore(Path(tempfile.mkdtemp()) / "idx", dim=DIM)
    store.add([Chunk(f"c{i}", f"d{i}", f"s{i}", "", t, 0, len(t), 0)
               for i, t in enumerate(texts)], v)
    t0 = stopwatch()
    store.save()
    build = t0()
    pairs = list(zip(qs_text, qv, strict=True))
    ann = "hnsw" if any(seg.hnsw is not None for seg in store.segments) else "exact"
    res: dict[str, Any] = {"ann": ann, "build_save_s": build}
    print(f"\n== {n} chunks ({ann} dense; build+save {build:.1f} s)")
    dense = pct(latencies(lambda p: store.search(p[1], 10), pairs), res, "ours_dense")
    print(f"ours dense           {dense}")
    bm = pct(latencies(lambda p: store.sparse_search(p[0], 10), pairs), res, "ours_bm25")
    print(f"ours bm25            {bm}")

    def hybrid(p: tuple[str, np.ndarray]) -> None:
        d = store.search(p[1], 50)
        s = store.sparse_search(p[0], 50)
        rrf([[h.chunk.chunk_id for h in d], [h.chunk.chunk_id for h in s]])

    print(f"ours hybrid (rrf)    {pct(latencies(hybrid, pairs), res, 'ours_hybrid_rrf')}")
    raw = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    raw.index(bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(),
                             show_progress=False), show_progress=False)

    def raw_bm25(p: tuple[str, np.ndarray]) -> None:
        qt = bm25s.tokenize([p[0]], stopwords="en", stemmer=_stemmer(), show_progress=False)
        raw.retrieve(qt, k=10, show_progress=False)

    print(f"peer raw bm25s       {pct(latencies(raw_bm25, pairs), res, 'peer_raw_bm25s')}")
    brute = pct(latencies(lambda p: np.argsort(-(v @ p[1]))[:10], pairs), res,
                "peer_numpy_brute")
    print(f"peer numpy brute     {brute}")
    flat = faiss.IndexFlatIP(DIM)
    flat.add(v)
    fl = pct(latencies(lambda p: flat.search(p[1][None], 10), pairs), res, "peer_faiss_flat")
    print(f"peer faiss flat      {fl}")
    hnsw = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 80
    hnsw.add(v)
    hnsw.hnsw.efSearch = 128
    hn = pct(latencies(lambda p: hnsw.search(p[1][None], 10), pairs), res, "peer_faiss_hnsw")
    print(f"peer faiss hnsw      {hn}")
    exact = np.array([np.argsort(-(v @ q))[:10] for q in qv[:50]])
    got = np.array([[int(h.chunk.chunk_id[1:]) for h in store.search(q, 10)]
                    for q in qv[:50]])
    rec = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, got, strict=True)])
    print(f"ours dense recall@10 vs exact: {rec:.3f}", flush=True)
    res["ours_dense_recall_at_10"] = float(rec)
    return res


if __name__ == "__main__":
    main()
