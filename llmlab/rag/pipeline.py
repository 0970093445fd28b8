"""`RagIndex`: incremental indexing of document folders and dense / BM25 / hybrid retrieval.

    idx = RagIndex.create("my.index")
    idx.index(["docs/"], chunk_size=256, overlap=32)     # re-run: only changed files
    hits = idx.retrieve("how do I ...", method="hybrid", top_k=5)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmlab.rag.chunk import Chunk, chunk_document, chunk_text
from llmlab.rag.embed import DEFAULT_BACKEND, Embedder, get_embedder
from llmlab.rag.fuse import FUSIONS, METHODS, rrf, weighted
from llmlab.rag.ingest import content_hash, load_documents
from llmlab.rag.stores.base import ChunkStore, Where
from llmlab.rag.stores.local import LocalStore, StoreError

MAX_QUERY_CHARS = 2000  # MiniLM reads 256 word pieces; BM25 and the prompt get this much


@dataclass
class Retrieved:
    chunk: Chunk
    score: float  # the method's own score (cosine, BM25, fused, or the rerank mix)
    cosine: float  # query-chunk cosine, comparable across methods: the answer gate uses it
    rank: int = 0


@dataclass
class IndexStats:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    vectors_reused: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.added} new, {self.updated} changed, {self.removed} removed, "
            f"{self.unchanged} unchanged documents; +{self.chunks_added}/-{self.chunks_removed}"
            f" chunks ({self.vectors_reused} embeddings reused); {len(self.errors)} errors"
        )


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


class IndexLimitError(ValueError):
    """Indexing would make more chunks than the caller allowed (nothing was embedded)."""


class RagIndex:
    def __init__(self, store: ChunkStore, embedder: Embedder | None = None) -> None:
        self.store = store
        info = getattr(store, "info", {})
        backend = info.get("embedder", f"x/{DEFAULT_BACKEND}").split("/")[-1]
        self._embedder = embedder
        self._backend = backend

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:  # loaded on first use: BM25-only queries never pay for it
            self._embedder = get_embedder(self._backend)
        return self._embedder

    @classmethod
    def create(cls, directory: str | Path, embedder: Embedder | None = None) -> RagIndex:
        """Open the index in `directory`, or start an empty one there."""
        return cls(LocalStore(directory), embedder)

    @classmethod
    def open(cls, directory: str | Path, verify: bool = True) -> RagIndex:
        """An existing, non-empty index; StoreError otherwise."""
        store = LocalStore.open(directory, verify=verify)
        if len(store) == 0:
            raise StoreError(f"{directory}: the index is empty (nothing was indexed)")
        return cls(store)

    # ---- indexing ------------------------------------------------------------------------
    def index(
        self,
        paths: list[str | Path],
        chunk_size: int = 256,
        overlap: int = 32,
        progress: bool = True,
        batch_size: int = 64,
        max_chunks: int | None = None,
    ) -> IndexStats:
        """Add new documents, re-chunk changed ones, drop vanished ones, then save atomically.

        Documents are compared by content hash (and chunking settings); documents indexed
        from other roots are left alone. A bad file goes to `stats.errors`, the rest go on.
        With `max_chunks`, documents that chunk into more than that raise IndexLimitError
        before any embedding and before the store changes: a server bounds a build's cost.
        """
        stats = IndexStats()
        roots = [str(Path(p).resolve()) for p in paths]
        docs = load_documents(paths, stats.errors)
        if max_chunks is not None:
            self._check_chunk_count(docs, chunk_size, overlap, max_chunks)
        info = getattr(self.store, "info", {})
        known: dict[str, dict[str, Any]] = info.setdefault("docs", {})
        info.setdefault("embedder", f"all-MiniLM-L6-v2/{self.embedder.name}")
        settings = [chunk_size, overlap]
        seen, todo = set(), []
        for d in docs:
            seen.add(d.doc_id)
            old = known.get(d.doc_id)
            if old and old["sha256"] == d.sha256 and old["chunking"] == settings:
                stats.unchanged += 1
                continue
            todo.append((d, old is not None))
        gone = [k for k, v in known.items() if v["root"] in roots and k not in seen]
        # Embedding cache: a chunk whose exact text was embedded before keeps its vector.
        stale = [d.doc_id for d, was in todo if was] + gone
        cache: dict[str, np.ndarray] = {}
        if stale:
            old_chunks = self.store.chunks_where({"doc_id": stale})
            if old_chunks:
                vecs = self.store.get_vectors([c.chunk_id for c in old_chunks])
                cache = {content_hash(c.text): v for c, v in zip(old_chunks, vecs, strict=True)}
                stats.chunks_removed = self.store.delete([c.chunk_id for c in old_chunks])
        for k in gone:
            del known[k]
        stats.removed = len(gone)

        new_chunks: list[Chunk] = []
        for d, was in todo:
            new_chunks += chunk_document(d, chunk_size, overlap)
            stats.updated += was
            stats.added += not was
        root_of = {d.doc_id: self._root_for(d.source, roots) for d, _ in todo}
        if new_chunks:
            vecs = np.zeros((len(new_chunks), self.store.dim), dtype=np.float32)
            need = []
            for i, c in enumerate(new_chunks):
                hit = cache.get(content_hash(c.text))
                if hit is None:
                    need.append(i)
                else:
                    vecs[i] = hit
            stats.vectors_reused = len(new_chunks) - len(need)
            if need:
                vecs[need] = self.embedder.embed(
                    [new_chunks[i].text for i in need], batch_size, progress=progress
                )
            self.store.add(new_chunks, vecs)
            stats.chunks_added = len(new_chunks)
        for d, _ in todo:
            known[d.doc_id] = {"sha256": d.sha256, "chunking": settings,
                               "root": root_of[d.doc_id], "source": d.source}
        self.save(progress)
        return stats

    @staticmethod
    def _check_chunk_count(docs: list[Any], chunk_size: int, overlap: int, limit: int) -> None:
        # Counted before the store is touched, stopping at the first document over the
        # limit; re-chunking later costs far less than the embedding this avoids.
        n = 0
        for d in docs:
            n += len(chunk_text(d.text, chunk_size, overlap))
            if n > limit:
                raise IndexLimitError(
                    f"chunk_size: {chunk_size} cuts these documents into more than {limit} "
                    "chunks, the limit per index; use a larger chunk_size or fewer documents"
                )

    @staticmethod
    def _root_for(source: str, roots: list[str]) -> str:
        if Path(source).is_absolute() or len(roots) == 1:
            return roots[0] if len(roots) == 1 else str(Path(source).resolve().parent)
        for r in roots:  # a relative source came from one of the directories given
            if (Path(r) / source.split("#L")[0]).exists():
                return r
        return roots[0]

    def save(self, progress: bool = False) -> None:
        save = getattr(self.store, "save", None)
        if save is not None:
            save(progress=progress)

    # ---- retrieval -----------------------------------------------------------------------
    def embed_query(self, query: str) -> np.ndarray:
        return self.embedder.embed([query])[0]

    def retrieve(
        self,
        query: str,
        method: str = "hybrid",
        top_k: int = 5,
        where: Where | None = None,
        fusion: str = "rrf",
        rrf_k: int = 60,
        alpha: float = 0.5,
        candidates: int | None = None,
        reranker: Any = None,
        rerank_top: int = 10,
        with_cosine: bool = True,
    ) -> list[Retrieved]:
        """Top-k chunks for `query`. Hybrid fuses `candidates` from each retriever
        (default max(50, 4k)); a reranker reorders the first `rerank_top` of them."""
        check_method(method)
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; valid: {', '.join(FUSIONS)}")
        if not query.strip():
            raise ValueError("query: empty")
        if len(query) > MAX_QUERY_CHARS:
            print(f"warning: query is {len(query)} characters; using the first "
                  f"{MAX_QUERY_CHARS}", file=sys.stderr)
            query = query[:MAX_QUERY_CHARS]
        depth = max(top_k, rerank_top if reranker else 0)
        n_cand = candidates or max(50, 4 * depth)
        # BM25 alone needs no embedding, except for the cosine the answer gate reads.
        qv = self.embed_query(query) if method != "bm25" or with_cosine else None
        if method == "dense":
            ranked = [(h.chunk, h.score) for h in self.store.search(qv, depth, where)]
        elif method == "bm25":
            ranked = [(h.chunk, h.score) for h in self.store.sparse_search(query, depth, where)]
        else:
            dense = self.store.search(qv, n_cand, where)
            sparse = self.store.sparse_search(query, n_cand, where)
            by_id = {h.chunk.chunk_id: h.chunk for h in dense + sparse}
            if fusion == "rrf":
                fused = rrf([[h.chunk.chunk_id for h in r] for r in (dense, sparse)], k=rrf_k)
            else:
                fused = weighted(
                    [[(h.chunk.chunk_id, h.score) for h in r] for r in (dense, sparse)],
                    [alpha, 1 - alpha],
                )
            ranked = [(by_id[cid], s) for cid, s in fused[:depth]]
        if reranker is not None and ranked:
            head = ranked[:rerank_top]
            scores = reranker.rerank(query, [c.text for c, _ in head], [s for _, s in head])
            order = np.argsort(-np.asarray(scores), kind="stable")
            ranked = [(head[i][0], float(scores[i])) for i in order] + ranked[rerank_top:]
        ranked = ranked[:top_k]
        if not ranked:
            return []
        if qv is None:
            cos = np.full(len(ranked), np.nan)
        else:
            cos = np.einsum("ij,j->i", self.store.get_vectors([c.chunk_id for c, _ in ranked]),
                            qv)  # not a threaded BLAS call: see segment.dense
        return [Retrieved(c, s, float(cs), r)
                for r, ((c, s), cs) in enumerate(zip(ranked, cos, strict=True), 1)]
