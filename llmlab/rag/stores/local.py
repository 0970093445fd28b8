"""The default store: a directory, no server. Immutable segments, tombstones, and a manifest.

Layout of `DIR`:
    CURRENT                      "manifest-NNNNNN.json <crc32>": the live generation
    manifest-NNNNNN.json         format, segments (each file with size and CRC-32), info
    seg-NNNNNN-JJ/               one segment (llmlab.rag.stores.segment), never modified
    seg-NNNNNN-JJ.del-MMMMMM.npy the rows of that segment deleted since it was written

A save writes only what changed: the chunks added since the last save become one new
segment, and deletions become a new tombstone file for each segment they touched. Small
segments are merged into bigger ones (the newest two while the older is at most twice the
newer, so there are O(log n) segments and each row is rewritten O(log n) times), and a
segment with more than 30% deleted rows is rewritten without them. The new manifest is
written, then CURRENT is replaced atomically: a run killed at any point leaves the previous
generation live, and its leftovers are removed by the next save. A load checks the size
and CRC-32 of every file it uses, so a damaged or half-written index is an error, never a
silently wrong answer.

Search runs per segment (HNSW past `ann_threshold` rows, exact below) and merges the
top k. Filters become numpy masks over dictionary-encoded columns, applied inside the
search: a narrow one makes dense search exact over the allowed rows, a wide one goes to
HNSW as a bitmap selector; BM25 scores only the allowed rows.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmlab.rag.chunk import Chunk
from llmlab.rag.sparse import Part, bm25_search
from llmlab.rag.stores.base import ChunkStore, Hit, Where, check_vectors
from llmlab.rag.stores.segment import Segment, crc32
from llmlab.weights.io import atomic_write_bytes

STAMPS = ".verified.json"
FORMAT = "llmlab-rag-index"
VERSION = 2
ANN_THRESHOLD = 20_000  # exact numpy search costs ~10 ms per 20k x 384 on 2 cores
MERGE_RATIO = 2
COMPACT_DEAD = 0.3


class StoreError(ValueError):
    """A missing, empty, half-written or corrupt index directory."""


def _enc(seg: int, row: int) -> int:
    return (seg << 32) | row


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
        self.segments: list[Segment] = []
        self.dead: list[np.ndarray | None] = []  # per segment: deleted rows (None: none)
        self._entries: list[dict[str, Any]] = []  # per segment: its manifest entry
        self._dirty: set[int] = set()  # segments whose tombstones changed since the save
        self._pending: list[Chunk] = []  # added since the last save: the "tail" segment
        self._pending_vecs: list[np.ndarray] = []
        self._pending_dead: list[bool] = []
        self._tail: Segment | None = None  # the pending rows built into a segment, cached
        self._rows: dict[str, int] = {}  # chunk id -> _enc(segment, row); tail = len(segments)
        self._stamps: dict[str, list[int]] = {}  # files verified: path -> stat + crc
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
            half = any(d.glob("seg-*")) or any(d.glob("gen-*"))
            what = "half-written (no CURRENT)" if half else "not an index"
            raise StoreError(f"{d}: {what}; re-run `llmlab rag index`")
        return cls(d, verify=verify)

    def _check(self, p: Path, size: int, crc: int, verify: bool) -> None:
        """Size always; CRC-32 unless this very file (same size, mtime, inode, expected CRC)
        was verified before, as git's index trusts unchanged stat data: a 1M-chunk index
        then opens in ~3 s instead of ~7 s, and any rewrite of a file is still caught."""
        if not p.is_file():
            raise StoreError(f"{p}: listed in the manifest but missing")
        st = p.stat()
        if st.st_size != size:
            raise StoreError(f"{p}: size mismatch, {st.st_size} bytes where the "
                             f"manifest says {size} (truncated, half-written or modified)")
        if not verify:
            return
        rel, key = p.relative_to(self.dir).as_posix(), [size, st.st_mtime_ns, st.st_ino, crc]
        if self._stamps.get(rel) != key:
            if crc32(p) != crc:
                raise StoreError(f"{p}: checksum mismatch (corrupt or modified)")
            self._stamps[rel] = key

    def _stamp(self, p: Path, crc: int) -> None:
        st = p.stat()
        self._stamps[p.relative_to(self.dir).as_posix()] = [st.st_size, st.st_mtime_ns,
                                                            st.st_ino, crc]

    def _save_stamps(self, keep: set[str] | None = None) -> None:
        if keep is not None:
            self._stamps = {k: v for k, v in self._stamps.items() if k.split("/")[0] in keep}
        with contextlib.suppress(OSError):  # a read-only index just verifies every time
            atomic_write_bytes(self.dir / STAMPS, json.dumps(self._stamps).encode())

    def _load(self, verify: bool) -> None:
        cur = (self.dir / "CURRENT").read_text().split()
        if len(cur) == 1 and re.fullmatch(r"gen-\d{6}", cur[0]):
            raise StoreError(f"{self.dir}: written by an older llmlab (index format 1); "
                             "delete it and re-run `llmlab rag index`")
        if len(cur) != 2 or not re.fullmatch(r"manifest-\d{6}\.json", cur[0]) \
                or not cur[1].isdigit():
            raise StoreError(f"{self.dir}/CURRENT: expected 'manifest-NNNNNN.json <crc32>', "
                             f"got {' '.join(cur)!r}")
        path = self.dir / cur[0]
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise StoreError(f"{path}: unreadable ({e})") from e
        if zlib.crc32(raw) != int(cur[1]):
            raise StoreError(f"{path}: checksum mismatch (corrupt or half-written)")
        man = json.loads(raw)
        if man.get("format") != FORMAT or man.get("version") != VERSION:
            raise StoreError(f"{path}: expected format {FORMAT} v{VERSION}, "
                             f"got {man.get('format')} v{man.get('version')}")
        self.dim, self.info, self.generation = man["dim"], man["info"], man["generation"]
        with contextlib.suppress(OSError, ValueError):
            self._stamps = json.loads((self.dir / STAMPS).read_text())
        before = dict(self._stamps)
        for i, e in enumerate(man["segments"]):
            d = self.dir / e["name"]
            for rel, (size, crc) in e["files"].items():
                self._check(d / rel, size, crc, verify)
            try:
                seg = Segment.load(d)
            except (OSError, ValueError, RuntimeError) as err:
                raise StoreError(f"{d}: unreadable segment ({err})") from err
            if len(seg) != e["rows"]:
                raise StoreError(f"{d}: {len(seg)} rows, the manifest says {e['rows']}")
            dead = None
            if e.get("deleted"):
                t = e["deleted"]
                self._check(self.dir / t["file"], t["size"], t["crc32"], verify)
                dead = np.zeros(len(seg), dtype=bool)
                dead[np.load(self.dir / t["file"])] = True
            self.segments.append(seg)
            self.dead.append(dead)
            self._entries.append(e)
            for r, cid in enumerate(seg.ids):
                if dead is None or not dead[r]:
                    self._rows[cid] = _enc(i, r)
        if self._stamps != before:
            self._save_stamps()

    def save(self, progress: bool = False) -> Path:
        """Write what changed as a new generation and make it current; returns the
        manifest's path."""
        self.dir.mkdir(parents=True, exist_ok=True)
        gen = self.generation + 1
        segs, dead = list(self.segments), list(self.dead)
        entries: list[dict[str, Any] | None] = list(self._entries)
        dirty = set(self._dirty)
        if not all(self._pending_dead):
            if any(self._pending_dead):  # written without its deleted rows
                keep_tail = ~np.array(self._pending_dead)
                segs.append(Segment.build(
                    [c for c, k in zip(self._pending, keep_tail, strict=True) if k],
                    self._pending_matrix()[keep_tail], self.ann_threshold,
                    progress))
            else:
                segs.append(self._tail_segment(progress))
            dead.append(None)
            entries.append(None)
        for i, (s, dm) in enumerate(zip(segs, dead, strict=True)):
            if dm is not None and dm.sum() > COMPACT_DEAD * len(s):
                segs[i] = Segment.merge([(s, ~dm)], self.ann_threshold, progress)
                dead[i], entries[i] = None, None
        keep = [i for i, (s, dm) in enumerate(zip(segs, dead, strict=True))
                if len(s) > (0 if dm is None else int(dm.sum()))]
        segs, dead, entries = [segs[i] for i in keep], [dead[i] for i in keep], \
            [entries[i] for i in keep]
        dirty = {keep.index(i) for i in dirty if i in keep}

        def live(i: int) -> int:
            return len(segs[i]) - (0 if dead[i] is None else int(dead[i].sum()))

        while len(segs) >= 2 and live(-2) <= MERGE_RATIO * live(-1):
            parts = [(segs[j], None if dead[j] is None else ~dead[j]) for j in (-2, -1)]
            merged = Segment.merge(parts, self.ann_threshold, progress)
            segs[-2:], dead[-2:], entries[-2:] = [merged], [None], [None]
        written: list[tuple[int, Path]] = []
        for i, s in enumerate(segs):
            if entries[i] is None:
                name = f"seg-{gen:06d}-{i:02d}"
                d = self.dir / name
                if d.exists():  # leftover of a run killed before it wrote CURRENT
                    shutil.rmtree(d)
                entries[i] = {"name": name, "rows": len(s), "files": s.write(d)}
                written.append((i, d))
            e = dict(entries[i])  # type: ignore[arg-type]
            if dead[i] is not None and (i in dirty or not e.get("deleted")):
                f = self.dir / f"{e['name']}.del-{gen:06d}.npy"
                np.save(f, np.flatnonzero(dead[i]).astype(np.int32))
                e["deleted"] = {"file": f.name, "size": f.stat().st_size, "crc32": crc32(f),
                                "count": int(dead[i].sum())}
            entries[i] = e
        man = {"format": FORMAT, "version": VERSION, "generation": gen, "dim": self.dim,
               "n_chunks": sum(live(i) for i in range(len(segs))), "segments": entries,
               "info": self.info}
        raw = json.dumps(man, ensure_ascii=False).encode()
        name = f"manifest-{gen:06d}.json"
        atomic_write_bytes(self.dir / name, raw)
        atomic_write_bytes(self.dir / "CURRENT", f"{name} {zlib.crc32(raw)}\n".encode())
        # Committed. Swap in the new state, then drop whatever the new manifest doesn't use.
        old = self.segments
        for i, d in written:  # re-open from disk: memory-mapped, the graph kept as it is
            segs[i] = Segment.load(d, hnsw=segs[i].hnsw)
        self.segments, self.dead, self._entries = segs, dead, entries  # type: ignore[assignment]
        for i, s in enumerate(segs):
            if i >= len(old) or old[i] is not s:
                for r, cid in enumerate(s.ids):
                    if dead[i] is None or not dead[i][r]:
                        self._rows[cid] = _enc(i, r)
        self._pending, self._pending_vecs, self._pending_dead = [], [], []
        self._tail, self._dirty, self.generation = None, set(), gen
        used = {"CURRENT", name} | {e["name"] for e in entries}  # type: ignore[index]
        used |= {e["deleted"]["file"] for e in entries if e.get("deleted")}  # type: ignore[union-attr]
        for p in self.dir.iterdir():
            if p.name not in used and (p.name.startswith(("seg-", "manifest-", "gen-"))):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        # What this save wrote is known good: the next open needn't read it back.
        for e in entries:
            if any(e is entries[i] for i, _ in written):  # type: ignore[union-attr]
                for rel, (_, crc) in e["files"].items():  # type: ignore[index]
                    self._stamp(self.dir / e["name"] / rel, crc)  # type: ignore[index]
            t = e.get("deleted")  # type: ignore[union-attr]
            if t and t["file"].endswith(f"{gen:06d}.npy"):
                self._stamp(self.dir / t["file"], t["crc32"])
        self._save_stamps(keep=used)
        return self.dir / name

    # ---- parts: the segments plus the unsaved tail ---------------------------------------
    def _pending_matrix(self) -> np.ndarray:
        if len(self._pending_vecs) > 1:  # one array from now on, not a copy per call
            self._pending_vecs = [np.concatenate(self._pending_vecs)]
        return self._pending_vecs[0]

    def _tail_segment(self, progress: bool = False) -> Segment:
        if self._tail is None:
            self._tail = Segment.build(self._pending, self._pending_matrix(),
                                       self.ann_threshold, progress)
        return self._tail

    def _parts(self) -> list[tuple[Segment, np.ndarray | None]]:
        parts = list(zip(self.segments, self.dead, strict=True))
        if self._pending:
            pd = np.array(self._pending_dead)
            parts.append((self._tail_segment(), pd if pd.any() else None))
        return parts

    def _allowed(self, where: Where | None) -> list[np.ndarray | None]:
        """Per part: rows a search may return (live and matching `where`); None = all."""
        out: list[np.ndarray | None] = []
        where = dict(where or {})
        ids = where.pop("chunk_id", None)
        if ids is not None:
            ids = [ids] if isinstance(ids, str) else list(ids)
            found = [self._rows[c] for c in ids if c in self._rows]
        for i, (seg, dm) in enumerate(self._parts()):
            m = None if dm is None else ~dm
            if where:
                wm = seg.mask(where)
                m = wm if m is None else m & wm
            if ids is not None:
                im = np.zeros(len(seg), dtype=bool)
                im[[e & 0xFFFFFFFF for e in found if e >> 32 == i]] = True
                m = im if m is None else m & im
            out.append(m)
        return out

    def _locate(self, cid: str) -> tuple[Segment | None, int]:
        e = self._rows.get(cid)
        if e is None:
            return None, -1
        i, r = e >> 32, e & 0xFFFFFFFF
        return (self.segments[i] if i < len(self.segments) else None), r

    # ---- ChunkStore ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def iter_chunks(self) -> Iterator[Chunk]:
        for seg, dm in self._parts():
            for r in range(len(seg)):
                if dm is None or not dm[r]:
                    yield seg.chunk(r)

    def chunks_where(self, where: Where) -> list[Chunk]:
        return [seg.chunk(int(r)) for (seg, _), m in zip(self._parts(), self._allowed(where),
                                                         strict=True)
                for r in (range(len(seg)) if m is None else np.flatnonzero(m))]

    def add(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        v = check_vectors(chunks, vectors, self.dim)
        new_ids = [c.chunk_id for c in chunks]
        dup = [i for i in new_ids if i in self._rows]
        if dup or len(set(new_ids)) != len(new_ids):
            raise ValueError(f"add: chunk ids already present or repeated: {dup[:3]}")
        tail, base = len(self.segments), len(self._pending)
        self._pending.extend(chunks)
        self._pending_vecs.append(v.copy())
        self._pending_dead.extend([False] * len(chunks))
        self._rows.update({cid: _enc(tail, base + i) for i, cid in enumerate(new_ids)})
        self._tail = None  # rebuilt on next use (BM25 statistics and the graph)

    def delete(self, chunk_ids: list[str] | None = None, where: Where | None = None) -> int:
        targets = {self._rows[c] for c in chunk_ids or [] if c in self._rows}
        if where:
            parts = self._parts()
            for i, m in enumerate(self._allowed(where)):
                rows = range(len(parts[i][0])) if m is None else np.flatnonzero(m)
                targets.update(_enc(i, int(r)) for r in rows)
        for e in targets:
            i, r = e >> 32, e & 0xFFFFFFFF
            if i < len(self.segments):
                if self.dead[i] is None:
                    self.dead[i] = np.zeros(len(self.segments[i]), dtype=bool)
                self.dead[i][r] = True  # type: ignore[index]
                self._dirty.add(i)
                del self._rows[self.segments[i].ids[r]]
            else:
                self._pending_dead[r] = True
                del self._rows[self._pending[r].chunk_id]
        return len(targets)

    def get(self, chunk_ids: list[str]) -> list[Chunk | None]:
        out: list[Chunk | None] = []
        for cid in chunk_ids:
            seg, r = self._locate(cid)
            out.append(None if r < 0 else self._pending[r] if seg is None else seg.chunk(r))
        return out

    def get_vectors(self, chunk_ids: list[str]) -> np.ndarray:
        missing = [i for i in chunk_ids if i not in self._rows]
        if missing:
            raise KeyError(f"unknown chunk ids: {missing[:3]}")
        out = np.zeros((len(chunk_ids), self.dim), dtype=np.float32)
        pend = self._pending_matrix() if self._pending_vecs else None
        for j, cid in enumerate(chunk_ids):
            seg, r = self._locate(cid)
            out[j] = pend[r] if seg is None else seg.vectors[r]  # type: ignore[index]
        return out

    def search(self, query: np.ndarray, k: int, where: Where | None = None) -> list[Hit]:
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise ValueError(f"query vector: expected {self.dim} dims, got {q.shape[0]}")
        if not self._rows or k <= 0:
            return []
        found = []
        for i, ((seg, _), m) in enumerate(zip(self._parts(), self._allowed(where),
                                              strict=True)):
            rows, scores = seg.dense(q, k, m, exact_below=self.ann_threshold)
            found += [(-float(s), i, int(r)) for r, s in zip(rows, scores, strict=True)]
        parts = self._parts()
        return [Hit(parts[i][0].chunk(r), -s) for s, i, r in sorted(found)[:k]]

    def sparse_search(self, query: str, k: int, where: Where | None = None) -> list[Hit]:
        parts = self._parts()
        allowed = self._allowed(where) if where else [None] * len(parts)
        bm = [Part(seg.postings, None if dm is None else ~dm, m)
              for (seg, dm), m in zip(parts, allowed, strict=True)]
        return [Hit(parts[i][0].chunk(r), s) for i, r, s in bm25_search(bm, query, k)]
