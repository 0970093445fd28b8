"""Indexing throughput: `RagIndex.index` (read, chunk, embed, BM25, save) vs raw
sentence-transformers encoding of the same chunks, and the two MiniLM backends' raw speed.

    python benchmarks/rag_index.py [--subdir tutorial] [--chunk-size 256]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import emit, print_machine, stopwatch  # noqa: E402

from llmlab.rag.embed import get_embedder  # noqa: E402
from llmlab.rag.evaluate import build_pydocs_set  # noqa: E402
from llmlab.rag.pipeline import RagIndex  # noqa: E402


def main() -> None:
    from sentence_transformers import SentenceTransformer

    from llmlab.weights.registry import _minilm_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("--subdir", default="tutorial")
    ap.add_argument("--chunk-size", type=int, default=256)
    args = ap.parse_args()
    print_machine()
    tmp = Path(tempfile.mkdtemp(prefix="rag-index-"))
    docs, _ = build_pydocs_set(tmp / "set", subdirs=(args.subdir,))
    st = SentenceTransformer(str(_minilm_dir()), device="cpu")
    for b in ("onnx", "torch"):
        get_embedder(b).embed(["warm up"])
    st.encode(["warm up"])
    rows = []
    for rep in range(2):  # alternate peers so load changes on the shared machine hit both
        for backend in ("onnx", "torch"):
            t = stopwatch()
            idx = RagIndex.create(tmp / f"idx-{backend}-{rep}", get_embedder(backend))
            stats = idx.index([docs], args.chunk_size, 32, progress=False)
            rows.append((f"ours RagIndex.index ({backend})", stats.chunks_added,
                         t()))
        texts = [c.text for c in idx.store.iter_chunks()]
        t = stopwatch()
        st.encode(texts, batch_size=64, normalize_embeddings=True)
        rows.append(("peer sentence-transformers encode", len(texts), t()))
    best: dict[str, tuple[int, float]] = {}
    for name, n, s in rows:
        if name not in best or s < best[name][1]:
            best[name] = (n, s)
    peer = best["peer sentence-transformers encode"]
    for name, (n, s) in best.items():
        print(f"{name:<36} {n} chunks  {s:6.1f} s  {n / s:6.1f} chunks/s  "
              f"time vs peer {s / peer[1]:.2f}x")
    emit({"subdir": args.subdir, "chunk_size": args.chunk_size,
          "best": {name: {"chunks": n, "seconds": s, "chunks_per_s": n / s,
                          "time_vs_peer": s / peer[1]} for name, (n, s) in best.items()}})


if __name__ == "__main__":
    main()
