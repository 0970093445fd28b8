"""One immutable piece of the local store: chunk records, vectors, BM25 postings, filter
columns and, past `ann_threshold` rows, an HNSW graph. Written once, never modified; the
store deletes rows with tombstones and merges segments into new ones.

Files (every one listed with its size and CRC-32 in the store's manifest):
    chunks.jsonl + offsets.npy   one JSON record per row; rows are read on demand (mmap)
    ids.json                     chunk ids, in row order
    columns.json + codes.npy     dictionary-encoded filter fields: codes[row, field] indexes
                                 the field's value list, -1 where a row lacks the field
    bm25/                        term postings (llmlab.rag.sparse.Postings)
    vectors.npy | hnsw.faiss     float32 rows; a graph segment keeps them only in the graph's
                                 flat storage, read back as a view (no second copy)
"""

from __future__ import annotations

import json
import mmap
import os
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from llmlab.rag.chunk import Chunk
from llmlab.rag.sparse import Postings
from llmlab.rag.stores.base import COLUMNS, Where

# faiss takes about a second to import: each function that needs it imports it then.

HNSW_M, HNSW_EF_BUILD = 32, 80
MAX_FILTERED_EF = 4096
ADD_BATCH = 10_000


def _encode(chunks: list[Chunk], row: int) -> bytes:
    return json.dumps(chunks[row].to_json(), ensure_ascii=False).encode() + b"\n"


def value_key(v: Any) -> str:
    """A filter value as a canonical string: 2000 and 2000.0 match (as in Python and jsonb),
    "2000" doesn't."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = float(v)
    return json.dumps(v, sort_keys=True, ensure_ascii=False)


def field_name(key: str) -> str:
    return key if key in COLUMNS else f"meta:{key}"


def crc32(path: Path) -> int:
    """CRC-32 of a file: catches truncation and flipped bits (the threat is damage, not
    tampering) at ~3x the speed of sha256, which matters for a 1M-chunk index."""
    c = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            c = zlib.crc32(block, c)
    return c


def ef_search(n: int, k: int) -> int:
    """HNSW search breadth for a graph of n rows. Equal recall needs a wider search in a
    bigger graph: 128 up to 125k rows, then in proportion, at most 1024 (on rag_scale.py's
    1M vectors, recall@10 is 0.68-0.71 at 128 and 0.92-0.95 at 1024; BENCHMARKS.md)."""
    return max(2 * k, min(1024, max(128, n * 128 // 125_000)))


def build_hnsw(vectors: np.ndarray, progress: bool = False, base: Any = None) -> Any:
    """An HNSW graph over `vectors` (inner product on unit vectors = cosine); with `base`,
    a copy of that graph extended by them (cheaper than rebuilding: HNSW takes appends)."""
    import faiss

    if base is not None:
        index = faiss.clone_index(base)
    else:
        index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_BUILD
    steps = range(0, len(vectors), ADD_BATCH)
    if progress and len(vectors) > ADD_BATCH:
        steps = tqdm(steps, desc="hnsw", unit=f"{ADD_BATCH // 1000}k vectors")
    for s in steps:
        index.add(np.ascontiguousarray(vectors[s : s + ADD_BATCH], dtype=np.float32))
    return index


def hnsw_vectors(index: Any) -> np.ndarray:
    """The graph's stored vectors as a (read-only) numpy view; valid while `index` lives."""
    import faiss

    flat = faiss.downcast_index(index.storage)
    n, d = index.ntotal, index.d
    if n == 0:
        return np.zeros((0, d), dtype=np.float32)
    return faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)


class Segment:
    def __init__(
        self,
        ids: list[str],
        vectors: np.ndarray,
        postings: Postings,
        fields: list[str],
        values: list[list[str]],
        codes: np.ndarray,
        records: Callable[[int], bytes] | None = None,
        hnsw: Any = None,
        name: str | None = None,
    ) -> None:
        self.ids, self.vectors, self.postings = ids, vectors, postings
        self.fields, self.values, self.codes = fields, values, codes
        self.hnsw, self.name = hnsw, name
        # Until written: a function giving row r's record (made on demand, so a million
        # pending chunks aren't held twice); once written, the mmap below.
        self._records = records
        self._mm: mmap.mmap | None = None
        self._offsets: np.ndarray | None = None
        self._value_index = [{v: i for i, v in enumerate(vals)} for vals in values]
        self._inverted: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.ids)

    # ---- building ------------------------------------------------------------------------
    @classmethod
    def build(cls, chunks: list[Chunk], vectors: np.ndarray, ann_threshold: int,
              progress: bool = False) -> Segment:
        fields = list(COLUMNS[1:])  # chunk_id is looked up through the id map instead
        for c in chunks:
            for k in c.meta or {}:
                if field_name(k) not in fields:
                    fields.append(field_name(k))
        values: list[dict[str, int]] = [{} for _ in fields]
        codes = np.full((len(chunks), len(fields)), -1, dtype=np.int32)
        for r, c in enumerate(chunks):
            for j, f in enumerate(fields):
                if f.startswith("meta:"):
                    if not c.meta or f[5:] not in c.meta:
                        continue
                    v = c.meta[f[5:]]
                else:
                    v = getattr(c, f)
                codes[r, j] = values[j].setdefault(value_key(v), len(values[j]))
        postings = Postings.build([c.text for c in chunks], progress=progress)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        hnsw = build_hnsw(vectors, progress) if len(chunks) >= ann_threshold else None
        if hnsw is not None:
            vectors = hnsw_vectors(hnsw)
        return cls([c.chunk_id for c in chunks], vectors, postings, fields,
                   [list(v) for v in values], codes, partial(_encode, chunks), hnsw)

    @classmethod
    def merge(cls, parts: Sequence[tuple[Segment, np.ndarray | None]], ann_threshold: int,
              progress: bool = False) -> Segment:
        """The kept rows (bool mask, None = all) of several segments, in order."""
        keeps = [np.ones(len(s), bool) if k is None else k for s, k in parts]
        ids = [i for (s, _), k in zip(parts, keeps, strict=True)
               for i, kk in zip(s.ids, k, strict=True) if kk]
        src_part = np.concatenate([np.full(int(k.sum()), j) for j, k in enumerate(keeps)])
        src_row = np.concatenate([np.flatnonzero(k) for k in keeps])
        segs = [s for s, _ in parts]

        def records(r: int) -> bytes:
            return segs[src_part[r]].record(int(src_row[r]))
        fields: list[str] = []
        for s, _ in parts:
            fields += [f for f in s.fields if f not in fields]
        values: list[dict[str, int]] = [{} for _ in fields]
        blocks = []
        for (s, _), k in zip(parts, keeps, strict=True):
            block = np.full((int(k.sum()), len(fields)), -1, dtype=np.int32)
            for j, f in enumerate(s.fields):
                jj = fields.index(f)
                remap = np.array([values[jj].setdefault(v, len(values[jj]))
                                  for v in s.values[j]] + [-1], dtype=np.int32)
                block[:, jj] = remap[s.codes[k, j]]  # code -1 picks the trailing -1
            blocks.append(block)
        codes = np.concatenate(blocks) if blocks else np.zeros((0, len(fields)), np.int32)
        postings = Postings.concat([(s.postings, k) for s, k in parts])
        vecs = np.concatenate([np.asarray(s.vectors)[k] for (s, _), k in
                               zip(parts, keeps, strict=True)])
        hnsw = None
        if len(ids) >= ann_threshold:
            first, k0 = parts[0]
            if first.hnsw is not None and (k0 is None or k0.all()):
                # The biggest segment comes first: extend its graph by the others' rows.
                hnsw = build_hnsw(vecs[len(first):], progress, base=first.hnsw)
            else:
                hnsw = build_hnsw(vecs, progress)
            vecs = hnsw_vectors(hnsw)
        return cls(ids, vecs, postings, fields, [list(v) for v in values], codes, records,
                   hnsw)

    # ---- files ---------------------------------------------------------------------------
    def write(self, d: Path) -> dict[str, list[int]]:
        """Write every file under `d` (fsynced); returns {relative path: [size, crc32]}."""
        d.mkdir(parents=True)
        assert self._records is not None or self._mm is not None
        with open(d / "chunks.jsonl", "wb") as f:
            offsets = [0]
            for r in range(len(self)):
                rec = self.record(r)
                f.write(rec)
                offsets.append(offsets[-1] + len(rec))
        np.save(d / "offsets.npy", np.array(offsets, dtype=np.int64))
        (d / "ids.json").write_text(json.dumps(self.ids, ensure_ascii=False), encoding="utf-8")
        (d / "columns.json").write_text(
            json.dumps({"fields": self.fields, "values": self.values}, ensure_ascii=False),
            encoding="utf-8")
        np.save(d / "codes.npy", self.codes)
        self.postings.save(d / "bm25")
        if self.hnsw is not None:
            import faiss

            faiss.write_index(self.hnsw, str(d / "hnsw.faiss"))
        else:
            np.save(d / "vectors.npy", np.asarray(self.vectors, dtype=np.float32))
        files = {}
        for p in sorted(d.rglob("*")):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
                files[p.relative_to(d).as_posix()] = [p.stat().st_size, crc32(p)]
        fd = os.open(d, os.O_RDONLY)  # the directory entries too
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return files

    @classmethod
    def load(cls, d: Path, hnsw: Any = None) -> Segment:
        """Open a written segment (records and arrays memory-mapped); `hnsw` reuses a graph
        already in memory instead of reading hnsw.faiss."""
        ids = json.loads((d / "ids.json").read_text(encoding="utf-8"))
        cols = json.loads((d / "columns.json").read_text(encoding="utf-8"))
        codes = np.load(d / "codes.npy", mmap_mode="r")
        postings = Postings.load(d / "bm25")
        if (d / "hnsw.faiss").exists():
            if hnsw is None:
                import faiss

                hnsw = faiss.read_index(str(d / "hnsw.faiss"))
            vectors = hnsw_vectors(hnsw)
        else:
            hnsw, vectors = None, np.load(d / "vectors.npy", mmap_mode="r")
        seg = cls(ids, vectors, postings, cols["fields"], cols["values"], codes, None, hnsw,
                  d.name)
        seg._offsets = np.load(d / "offsets.npy")
        with open(d / "chunks.jsonl", "rb") as f:
            size = os.fstat(f.fileno()).st_size
            seg._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        n = len(ids)
        if not (len(seg._offsets) == n + 1 and codes.shape[0] == n == len(vectors)
                == postings.n_rows and int(seg._offsets[-1]) == size):
            raise ValueError(f"{d}: its files disagree on the number of rows")
        return seg

    # ---- rows ----------------------------------------------------------------------------
    def record(self, row: int) -> bytes:
        if self._records is not None:
            return self._records(row)
        assert self._offsets is not None and self._mm is not None
        return self._mm[int(self._offsets[row]) : int(self._offsets[row + 1])]

    def chunk(self, row: int) -> Chunk:
        return Chunk(**json.loads(self.record(row)))

    def mask(self, where: Where) -> np.ndarray:
        """Rows matching every field of `where` (chunk_id is the store's business)."""
        m = np.ones(len(self), dtype=bool)
        for key, want in where.items():
            f = field_name(key)
            if f not in self.fields:
                return np.zeros(len(self), dtype=bool)
            vals = list(want) if isinstance(want, (list, tuple, set)) else [want]
            j = self.fields.index(f)
            idx = self._value_index[j]
            order, starts = self._field_rows(j)
            fm = np.zeros(len(self), dtype=bool)
            for c in {idx[value_key(v)] for v in vals if value_key(v) in idx}:
                fm[order[starts[c] : starts[c + 1]]] = True
            m &= fm
        return m

    def _field_rows(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """An inverted index of field j, built on first use (the segment never changes):
        the rows with code c are order[starts[c]:starts[c + 1]]. A filter then costs the
        rows it matches, not a scan of the whole column."""
        if j not in self._inverted:
            col = np.asarray(self.codes[:, j])
            order = np.argsort(col, kind="stable").astype(np.int32)
            starts = np.searchsorted(col[order], np.arange(len(self.values[j]) + 1))
            self._inverted[j] = (order, starts)
        return self._inverted[j]

    def dense(self, q: np.ndarray, k: int, allowed: np.ndarray | None,
              exact_below: int) -> tuple[np.ndarray, np.ndarray]:
        """Top k rows by inner product among `allowed` (None = all)."""
        n = len(self)
        if allowed is not None:
            rows = np.flatnonzero(allowed)
            if len(rows) == 0:
                return rows, np.zeros(0, np.float32)
        if self.hnsw is None or (allowed is not None and len(rows) <= exact_below):
            # einsum, not BLAS: a threaded gemv this small gains nothing and, on a busy
            # machine, waits for its slowest thread (p95 70 ms vs 0.1 ms measured at 2k rows)
            if allowed is None:
                s = np.einsum("ij,j->i", self.vectors, q)
                rows = np.arange(n)
            else:
                s = np.einsum("ij,j->i", self.vectors[rows], q)
            if len(s) > k:
                top = np.argpartition(-s, k - 1)[:k]
                rows, s = rows[top], s[top]
            order = np.lexsort((rows, -s))
            return rows[order], s[order]
        import faiss

        ef = ef_search(n, k)
        params = faiss.SearchParametersHNSW(efSearch=ef)
        if allowed is not None and len(rows) < n:
            # A filter hides part of the graph: search wider, in proportion, to still
            # collect k allowed rows.
            params.efSearch = int(max(ef, min(ef * n / len(rows), MAX_FILTERED_EF)))
            # `bits` and the selector are locals: they outlive the search below.
            bits = np.packbits(allowed, bitorder="little")
            sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
            params.sel = sel
        scores, found = self.hnsw.search(q[None].astype(np.float32), k, params=params)
        keep = found[0] >= 0
        return found[0][keep].astype(np.int64), scores[0][keep]
