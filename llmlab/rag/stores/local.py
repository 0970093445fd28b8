"""The default store: a directory, no server. Exact search while small, HNSW (faiss) beyond.

Layout: `DIR/CURRENT` names the live generation `DIR/gen-NNNNNN/`, which holds
`manifest.json` (format, counts, sha256 of every file), `chunks.jsonl`, `vectors.npy`,
`bm25/` and, past `ann_threshold` chunks, `hnsw.faiss`. A save writes a whole new
generation and then replaces CURRENT atomically, so a run killed at any point leaves the
previous generation live; a load checks every checksum, so a damaged index is an error,
never a silently wrong answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmlab.rag.chunk import Chunk
from llmlab.rag.sparse import BM25Index
from llmlab.rag.stores.base import ChunkStore, Hit, Where, check_vectors, matches
from llmlab.weights.io import atomic_write_bytes

FORMAT = "llmlab-rag-index"
VERSION = 1
ANN_THRESHOLD = 20_000  # exact numpy search costs ~10 ms per 20k x 384 on 2 cores
HNSW_M, HNSW_EF_BUILD, HNSW_EF_SEARCH = 32, 80, 128


class StoreError(ValueError):
    """A missing, empty, half-written or corrupt index directory."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


class LocalStore(ChunkStore):
    def __init__(
        self,
        directory: str | Path,
        dim: int = 384,
        ann_threshold: int = ANN_THRESHOLD,
        verify: bool = True,
    ) -> None:
        self.dir = Path(directory)
        self.dim = dim
        self.ann_threshold = ann_threshold
        self.info: dict[str, Any] = {}  # the pipeline's own metadata (docs, embedder, ...)
        self.chunks: list[Chunk] = []
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self._rows: dict[str, int] = {}
        self._bm25: BM25Index | None = None
        self._ann: Any = None  # faiss index over rows [0, _ann.ntotal)
        self.generation = 0
        if (self.dir / "CURRENT").exists():
            self._load(verify)

    # ---- persistence -------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | Path, verify: bool = True) -> LocalStore:
        """An existing index; a clear error when there is none or it is damaged."""
        d = Path(directory)
        if not d.is_dir():
            raise StoreError(f"{d}: no index here (create one with `llmlab rag index`)")
        if not (d / "CURRENT").exists():
            what = "half-written (no CURRENT)" if any(d.glob("gen-*")) else "not an index"
            raise StoreError(f"{d}: {what}; re-run `llmlab rag index`")
        return cls(d, verify=verify)

    def _gen_dir(self, gen: int) -> Path:
        return self.dir / f"gen-{gen:06d}"

    def _load(self, verify: bool) -> None:
        name = (self.dir / "CURRENT").read_text().strip()
        if not re.fullmatch(r"gen-\d{6}", name):
            raise StoreError(f"{self.dir}/CURRENT: expected a generation name, got {name!r}")
        g = self.dir / name
        try:
            man = json.loads((g / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StoreError(f"{g}/manifest.json: unreadable ({e})") from e
        if man.get("format") != FORMAT or man.get("version") != VERSION:
            raise StoreError(
                f"{g}/manifest.json: expected format {FORMAT} v{VERSION}, "
                f"got {man.get('format')} v{man.get('version')}"
            )
        if verify:
            for rel, want in man["files"].items():
                p = g / rel
                if not p.is_file():
                    raise StoreError(f"{p}: listed in the manifest but missing")
                if _sha256(p) != want:
                    raise StoreError(f"{p}: checksum mismatch (corrupt or modified)")
        self.generation = int(name[4:])
        self.dim = man["dim"]
        self.info = man.get("info", {})
        with open(g / "chunks.jsonl", encoding="utf-8") as f:
            self.chunks = [Chunk(**json.loads(line)) for line in f]
        self.vectors = np.load(g / "vectors.npy")
        if self.vectors.shape != (len(self.chunks), self.dim) or man["n_chunks"] != len(
            self.chunks
        ):
            raise StoreError(
                f"{g}: {len(self.chunks)} chunks, vectors {self.vectors.shape}, "
                f"manifest says {man['n_chunks']}"
            )
        self._rows = {c.chunk_id: i for i, c in enumerate(self.chunks)}
        self._bm25 = BM25Index.load(g / "bm25", len(self.chunks))
        if (g / "hnsw.faiss").exists():
            import faiss

            self._ann = faiss.read_index(str(g / "hnsw.faiss"))

    def save(self, progress: bool = False) -> Path:
        """Write a new generation and make it current. Returns its directory."""
        self.dir.mkdir(parents=True, exist_ok=True)
        gen = self.generation + 1
        g = self._gen_dir(gen)
        if g.exists():  # leftover of a run killed before it wrote CURRENT
            shutil.rmtree(g)
        g.mkdir()
        with open(g / "chunks.jsonl", "w", encoding="utf-8") as f:
            for c in self.chunks:
                f.write(json.dumps(c.to_json(), ensure_ascii=False) + "\n")
        np.save(g / "vectors.npy", self.vectors)
        self._sparse(progress).save(g / "bm25")
        if self._ensure_ann(progress) is not None:
            import faiss

            faiss.write_index(self._ann, str(g / "hnsw.faiss"))
        files = {
            p.relative_to(g).as_posix(): _sha256(p) for p in sorted(g.rglob("*")) if p.is_file()
        }
        man = {"format": FORMAT, "version": VERSION, "dim": self.dim,
               "n_chunks": len(self.chunks), "files": files, "info": self.info}
        (g / "manifest.json").write_text(json.dumps(man, indent=1, ensure_ascii=False))
        _fsync_tree(g)
        atomic_write_bytes(self.dir / "CURRENT", f"{g.name}\n".encode())
        self.generation = gen
        for old in self.dir.glob("gen-*"):
            if old != g:
                shutil.rmtree(old, ignore_errors=True)
        return g

    # ---- ChunkStore ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.chunks)

    def iter_chunks(self) -> Iterator[Chunk]:
        return iter(self.chunks)

    def add(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        v = check_vectors(chunks, vectors, self.dim)
        new_ids = [c.chunk_id for c in chunks]
        dup = [i for i in new_ids if i in self._rows]
        if dup or len(set(new_ids)) != len(new_ids):
            raise ValueError(f"add: chunk ids already present or repeated: {dup[:3]}")
        base = len(self.chunks)
        self.chunks.extend(chunks)
        self.vectors = np.concatenate([self.vectors, v]) if base else v.copy()
        self._rows.update({cid: base + i for i, cid in enumerate(new_ids)})
        self._bm25 = None  # BM25 statistics (idf, avgdl) are global: rebuild on next use

    def delete(self, chunk_ids: list[str] | None = None, where: Where | None = None) -> int:
        ids = set(chunk_ids or [])
        drop = [
            i for i, c in enumerate(self.chunks)
            if (c.chunk_id in ids) or (where is not None and matches(c, where))
        ]
        if not drop:
            return 0
        keep = np.ones(len(self.chunks), dtype=bool)
        keep[drop] = False
        self.chunks = [c for c, k in zip(self.chunks, keep, strict=True) if k]
        self.vectors = self.vectors[keep]
        self._rows = {c.chunk_id: i for i, c in enumerate(self.chunks)}
        self._bm25 = None
        self._ann = None  # HNSW can't remove points: rebuild when next needed
        return len(drop)

    def get(self, chunk_ids: list[str]) -> list[Chunk | None]:
        return [self.chunks[self._rows[i]] if i in self._rows else None for i in chunk_ids]

    def get_vectors(self, chunk_ids: list[str]) -> np.ndarray:
        missing = [i for i in chunk_ids if i not in self._rows]
        if missing:
            raise KeyError(f"unknown chunk ids: {missing[:3]}")
        return self.vectors[[self._rows[i] for i in chunk_ids]]

    def mask(self, where: Where | None) -> np.ndarray | None:
        if not where:
            return None
        return np.fromiter((matches(c, where) for c in self.chunks), bool, len(self.chunks))

    def search(self, query: np.ndarray, k: int, where: Where | None = None) -> list[Hit]:
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query vector: expected {self.dim} dims, got {q.shape[0]}")
        n = len(self.chunks)
        if n == 0 or k <= 0:
            return []
        m = self.mask(where)
        ann = self._ensure_ann()
        if ann is not None:
            rows, scores = self._ann_search(q, k, m)
        else:
            s = self.vectors @ q
            if m is not None:
                s = np.where(m, s, -np.inf)
            k_ = min(k, n if m is None else int(m.sum()))
            rows = np.argpartition(-s, k_ - 1)[:k_] if k_ < n else np.arange(n)
            rows = rows[np.argsort(-s[rows], kind="stable")][:k_]
            scores = s[rows]
        return [Hit(self.chunks[r], float(sc)) for r, sc in zip(rows, scores, strict=True)]

    def sparse_search(self, query: str, k: int, where: Where | None = None) -> list[Hit]:
        rows, scores = self._sparse().search(query, k, self.mask(where))
        return [Hit(self.chunks[r], float(s)) for r, s in zip(rows, scores, strict=True)]

    # ---- derived indexes -----------------------------------------------------------------
    def _sparse(self, progress: bool = False) -> BM25Index:
        if self._bm25 is None:
            self._bm25 = BM25Index.build([c.text for c in self.chunks], progress=progress)
        return self._bm25

    def _ensure_ann(self, progress: bool = False) -> Any:
        if len(self.chunks) < self.ann_threshold:
            self._ann = None
            return None
        import faiss

        if self._ann is None or self._ann.ntotal > len(self.chunks):
            self._ann = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            self._ann.hnsw.efConstruction = HNSW_EF_BUILD
        start, n = self._ann.ntotal, len(self.chunks)
        steps = range(start, n, 10_000)
        if progress and n - start > 10_000:
            from tqdm import tqdm

            steps = tqdm(steps, desc="hnsw", unit="10k vectors")
        for s in steps:  # HNSW takes appends: only new rows are inserted
            self._ann.add(self.vectors[s : s + 10_000])
        return self._ann

    def _ann_search(
        self, q: np.ndarray, k: int, m: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        params = faiss.SearchParametersHNSW(efSearch=max(HNSW_EF_SEARCH, 2 * k))
        if m is not None:
            allowed = np.flatnonzero(m)
            if len(allowed) <= 4 * self.ann_threshold:
                # A narrow filter: exact search over the few allowed rows is faster and exact.
                s = self.vectors[allowed] @ q
                top = np.argsort(-s, kind="stable")[:k]
                return allowed[top], s[top]
            params.sel = faiss.IDSelectorBatch(allowed.astype(np.int64))
        scores, rows = self._ann.search(q[None], k, params=params)
        keep = rows[0] >= 0
        return rows[0][keep], scores[0][keep]
