"""The local store at a million chunks: build time, memory, disk, open time, query latency
(dense HNSW with recall@10 against exact numpy, BM25, hybrid, filtered), and the cost of
add / update / delete + save on the full index.

Text: real prose and reference text, the Python 3.11 docs sources and the King James Bible
(~2.5M words), cut into chunks of 150 consecutive words at random offsets, so every chunk
is real text and no two are the same. Vectors: embedding a million chunks with MiniLM
would take days on 2 cores, so `--base` chunks are embedded for real (MiniLM, onnx) and
each stored vector is a random convex mix of two of those real embeddings plus Gaussian
noise, L2-normalised; query vectors are real MiniLM embeddings of Python-docs section
titles. Latency figures exclude the query embedding (rag_query.py measures it).

    python benchmarks/rag_scale.py [--chunks 1000000] [--dir /tmp/rag1m] [--reuse]
    python benchmarks/rag_scale.py --open-only [--dir /tmp/rag1m]   # open time + RSS, fresh
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import subprocess
from pathlib import Path

import numpy as np
from _common import emit, print_machine, stopwatch

from llmlab.rag.chunk import Chunk
from llmlab.rag.fuse import rrf
from llmlab.rag.stores.local import LocalStore

WORDS = 150
DOC_CHUNKS = 8  # chunks per synthetic document (doc_id filters, delete by document)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak, Linux KiB


def rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")) / 1024


def open_bench(d: str, report: dict) -> LocalStore:
    """Open three ways, each with no other store alive: with the previous 1M store still
    referenced, the stat-checked open took 5.9 s in-run against 2.1 s once freed."""
    (Path(d) / ".verified.json").unlink(missing_ok=True)
    store = None
    for how, verify in (("crc32_every_file", True), ("crc32_of_changed_files_only", True),
                        ("sizes_only", False)):
        store = None
        gc.collect()
        t = stopwatch()
        store = LocalStore.open(d, verify=verify)
        report[f"open_s_{how}"] = round(t(), 2)
    report["rss_after_open_mb (current, not peak)"] = round(rss_now_mb())
    return store


def du_mb(d: Path) -> float:
    return int(subprocess.check_output(["du", "-sb", str(d)]).split()[0]) / 2**20


def pct(times: list[float]) -> dict[str, float]:
    a = np.array(times) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2)}


def latencies(fn, items) -> list[float]:  # noqa: ANN001
    fn(items[0])
    out = []
    for x in items:
        t = stopwatch()
        fn(x)
        out.append(t())
    return out


class Corpus:
    def __init__(self, base: int, seed: int = 0) -> None:
        from llmlab.data.corpora import kjv_text, pydocs_text
        from llmlab.rag.embed import get_embedder

        self.words = (pydocs_text() + "\n" + kjv_text()).split()
        self.rng = np.random.default_rng(seed)
        self.emb = get_embedder("onnx")
        texts = [self.text(int(o)) for o in self.offsets(base)]
        t = stopwatch()
        self.base = self.emb.embed(texts, 64, progress=True)
        self.embed_s = t()

    def offsets(self, n: int) -> np.ndarray:
        return self.rng.integers(0, len(self.words) - WORDS, n)

    def text(self, o: int) -> str:
        return " ".join(self.words[o : o + WORDS])

    def vectors(self, n: int) -> np.ndarray:
        a, b = self.rng.integers(0, len(self.base), (2, n))
        w = self.rng.random((n, 1), dtype=np.float32)
        v = w * self.base[a] + (1 - w) * self.base[b]
        v += self.rng.normal(0, 0.02, v.shape).astype(np.float32)  # |noise| ~ 0.4
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    def chunks(self, start: int, n: int, tag: str = "") -> list[Chunk]:
        out = []
        for i, o in zip(range(start, start + n), self.offsets(n), strict=True):
            t = self.text(int(o))
            doc = f"d{i // DOC_CHUNKS}"
            out.append(Chunk(f"{doc}#{i % DOC_CHUNKS}{tag}", doc, f"{doc}.txt", "", t,
                             0, len(t), 0, {"shard": i % 10}))
        return out


def build(args: argparse.Namespace, corpus: Corpus, report: dict) -> None:
    d = Path(args.dir)
    shutil.rmtree(d, ignore_errors=True)
    store = LocalStore(d)
    t = stopwatch()
    step = 50_000
    for s in range(0, args.chunks, step):
        n = min(step, args.chunks - s)
        store.add(corpus.chunks(s, n), corpus.vectors(n))
    gen_s = t()
    t = stopwatch()
    store.save(progress=True)
    report["build"] = {
        "chunks": len(store), "generate_and_add_s": round(gen_s, 1),
        "save_s (bm25 + hnsw + write)": round(t(), 1),
        "peak_rss_mb": round(rss_mb()), "disk_mb": round(du_mb(d)),
        "segments": [len(s) for s in store.segments]}
    print(json.dumps(report["build"]), flush=True)


def queries(corpus: Corpus, n: int) -> tuple[list[str], np.ndarray]:
    from llmlab.rag.evaluate import PYDOCS, clean_title, rst_sections

    titles = []
    for f in sorted((PYDOCS / "library").glob("*.rst.txt")):
        titles += [clean_title(t) for t, _ in rst_sections(f.read_text(encoding="utf-8"))]
    titles = [t for t in dict.fromkeys(titles) if len(t.split()) >= 2]
    pick = np.random.default_rng(1).choice(len(titles), n, replace=False)
    qs = [titles[i] for i in pick]
    return qs, corpus.emb.embed(qs, 64)


def search_bench(store: LocalStore, qs: list[str], qv: np.ndarray, report: dict,
                 tag: str) -> None:
    live = np.concatenate([np.ones(len(s), bool) if dm is None else ~dm
                           for s, dm in zip(store.segments, store.dead, strict=True)])
    ids = [i for s in store.segments for i in s.ids]
    pairs = list(zip(qs, qv, strict=True))
    out: dict = {}
    out["dense"] = pct(latencies(lambda p: store.search(p[1], 10), pairs))
    t0 = stopwatch()
    m = min(100, len(qv))
    exact = np.concatenate([np.asarray(s.vectors) @ qv[:m].T for s in store.segments])
    exact[~live] = -np.inf
    out["numpy_exact_per_query_ms"] = round(t0() * 1000 / m, 1)
    rec = []
    for j in range(m):
        want = {ids[i] for i in np.argpartition(-exact[:, j], 10)[:10]}
        got = {h.chunk.chunk_id for h in store.search(qv[j], 10)}
        rec.append(len(want & got) / 10)
    out["dense_recall@10_vs_exact"] = round(float(np.mean(rec)), 4)
    big = max(store.segments, key=len)
    if big.hnsw is not None:  # the breadth / recall trade-off on the biggest graph
        import faiss

        base = sum(len(s) for s in store.segments[: store.segments.index(big)])
        for ef in (128, 256, 512, 1024):
            p = faiss.SearchParametersHNSW(efSearch=ef)
            t0 = stopwatch()
            _, got = big.hnsw.search(qv[:m], 10, params=p)
            ms = t0() * 1000 / m
            sub = exact[base : base + len(big)]
            want = np.argpartition(-sub, 10, axis=0)[:10].T
            r = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want, strict=True)])
            out[f"hnsw_ef{ef}"] = {"recall@10": round(float(r), 4), "ms": round(ms, 2)}
    out["bm25"] = pct(latencies(lambda p: store.sparse_search(p[0], 10), pairs))

    def hybrid(p: tuple[str, np.ndarray], where: dict | None = None) -> None:
        dh = store.search(p[1], 50, where)
        sh = store.sparse_search(p[0], 50, where)
        rrf([[h.chunk.chunk_id for h in dh], [h.chunk.chunk_id for h in sh]])

    out["hybrid"] = pct(latencies(hybrid, pairs))
    # filters: a wide one (a tenth of the rows) and a narrow one (twenty documents)
    wide = {"shard": 3}
    out["dense_filter_10pct"] = pct(latencies(lambda p: store.search(p[1], 10, wide), pairs))
    out["bm25_filter_10pct"] = pct(latencies(lambda p: store.sparse_search(p[0], 10, wide),
                                         pairs))
    out["hybrid_filter_10pct"] = pct(latencies(lambda p: hybrid(p, wide), pairs))
    rows3 = np.zeros(len(ids), dtype=bool)
    base = 0
    for s in store.segments:
        rows3[base : base + len(s)] = s.mask(wide)
        base += len(s)
    rec = []
    for j in range(min(50, m)):
        sc = np.where(rows3 & live, exact[:, j], -np.inf)
        want = {ids[i] for i in np.argpartition(-sc, 10)[:10]}
        got = {h.chunk.chunk_id for h in store.search(qv[j], 10, wide)}
        assert all(h.chunk.meta["shard"] == 3 for h in store.search(qv[j], 10, wide))
        rec.append(len(want & got) / 10)
    out["dense_filter_10pct_recall@10"] = round(float(np.mean(rec)), 4)
    docs = [f"d{i}" for i in range(0, 20 * 997, 997)]
    narrow = {"doc_id": docs}
    out["dense_filter_20docs"] = pct(latencies(lambda p: store.search(p[1], 10, narrow), pairs))
    out["hybrid_filter_20docs"] = pct(latencies(lambda p: hybrid(p, narrow), pairs))
    report[f"search_{tag}"] = out
    print(tag, json.dumps(out), flush=True)


def updates(store: LocalStore, corpus: Corpus, report: dict, n: int = 1000) -> None:
    d = store.dir
    out = {}
    total = len(store)

    def step(name: str, fn) -> None:  # noqa: ANN001
        before = du_mb(d)
        t = stopwatch()
        fn()
        op_s = t()
        store.save()
        out[name] = {"op_s": round(op_s, 2), "save_s": round(t() - op_s, 2),
                     "disk_delta_mb": round(du_mb(d) - before, 1),
                     "segments": [len(s) for s in store.segments]}
        print(name, out[name], flush=True)

    tag = f"+{store.generation}"  # new ids on every run
    step(f"add {n}", lambda: store.add(corpus.chunks(total, n, tag), corpus.vectors(n)))
    old = [c for c in corpus.chunks(0, 3 * n) if c.chunk_id in store._rows][:n]
    step(f"update {len(old)}", lambda: store.update(old, corpus.vectors(len(old))))
    ids = [c.chunk_id for c in corpus.chunks(5 * n, 3 * n) if c.chunk_id in store._rows][:n]
    step(f"delete {len(ids)} by id", lambda: store.delete(ids))
    docs = [f"d{i}" for i in range(20_000, 20_000 + n // DOC_CHUNKS)]
    step(f"delete {n // DOC_CHUNKS} documents by filter", lambda: store.delete(
        where={"doc_id": docs}))
    report["updates"] = out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=1_000_000)
    ap.add_argument("--base", type=int, default=3000, help="real MiniLM embeddings")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--dir", default="/tmp/rag1m")
    ap.add_argument("--reuse", action="store_true", help="skip the build if --dir has one")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--open-only", action="store_true",
                    help="only time opening --dir (in a fresh process) and its memory")
    args = ap.parse_args()
    print_machine()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    report: dict = {"args": vars(args)}
    if args.open_only:
        report["rss_before_open_mb"] = round(rss_now_mb())
        open_bench(args.dir, report)
        emit(report)
        return
    corpus = Corpus(args.base)
    report["base_embed_s"] = round(corpus.embed_s, 1)
    qs, qv = queries(corpus, args.queries)
    corpus.emb = None  # the onnx session's arenas hold GBs the build needs
    gc.collect()
    if not (args.reuse and (Path(args.dir) / "CURRENT").exists()):
        build(args, corpus, report)
    gc.collect()
    store = open_bench(args.dir, report)
    search_bench(store, qs, qv, report, "full")
    updates(store, corpus, report)
    store = None
    gc.collect()
    search_bench(LocalStore.open(args.dir), qs, qv, report, "after_updates")
    report["peak_rss_mb"] = round(rss_mb())
    emit(report, args.out)


if __name__ == "__main__":
    main()
