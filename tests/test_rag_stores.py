"""Both chunk stores against numpy brute force; persistence, corruption and interruption of
the local store. The pgvector tests need `eval "$(bash scripts/services.sh)"` first."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from llmlab.rag.chunk import Chunk
from llmlab.rag.stores import LocalStore, StoreError
from llmlab.rag.stores.base import ChunkStore

DIM = 16


def _data(n: int, seed: int = 0) -> tuple[list[Chunk], np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    words = ["apple", "banana", "cherry", "durian", "elder"]
    chunks = [Chunk(f"c{i}", f"d{i % 7}", f"src/{i % 7}.md", "t",
                    f"{words[i % 5]} text number {i}", 0, 10, 4,
                    {"lang": "en" if i % 3 else "fr", "year": 2000 + i % 4})
              for i in range(n)]
    return chunks, v


def _brute(v: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[int]:
    s = v @ q
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    order = np.argsort(-s, kind="stable")
    return [int(i) for i in order[:k] if np.isfinite(s[i])]


@pytest.fixture(params=["local", "pgvector"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChunkStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "idx", dim=DIM)
        return
    dsn = os.environ.get("LLMLAB_PG_DSN")
    if not dsn:
        pytest.skip('LLMLAB_PG_DSN unset: run eval "$(bash scripts/services.sh)"')
    from llmlab.rag.stores.pgvector import PgVectorStore

    s = PgVectorStore(dsn, table=f"t_{uuid.uuid4().hex[:12]}", dim=DIM)
    yield s
    s.drop()
    s.close()


def test_search_add_delete_update_filters(store: ChunkStore) -> None:
    chunks, v = _data(300)
    store.add(chunks, v)
    assert len(store) == 300
    q = v[5] * 0.6 + v[9] * 0.4
    q /= np.linalg.norm(q)
    hits = store.search(q, 10)
    assert [int(h.chunk.chunk_id[1:]) for h in hits] == _brute(v, q, 10)
    assert [h.score for h in hits] == pytest.approx((v @ q)[_brute(v, q, 10)], abs=1e-5)
    # filters: a column, a meta key, a list of accepted values
    where = {"lang": "fr", "year": [2000, 2001]}
    allowed = np.array([matches_ref(c, where) for c in chunks])
    got = [int(h.chunk.chunk_id[1:]) for h in store.search(q, 10, where)]
    assert got == _brute(v, q, 10, allowed)
    got = [h.chunk.chunk_id for h in store.search(q, 5, {"doc_id": "d3"})]
    assert got and all(int(c[1:]) % 7 == 3 for c in got)
    # delete by id and by filter
    assert store.delete(["c5", "c9"]) == 2
    assert store.get(["c5", "c1"])[0] is None and store.get(["c1"])[0].text.endswith(" 1")
    assert "c5" not in {h.chunk.chunk_id for h in store.search(q, 10)}
    n_d3 = sum(1 for c in chunks if c.doc_id == "d3" and c.chunk_id not in ("c5", "c9"))
    assert store.delete(where={"doc_id": "d3"}) == n_d3
    assert len(store) == 298 - n_d3
    # update replaces text and vector
    new = Chunk("c1", "d1", "src/1.md", "t", "replaced text", 0, 5, 2, None)
    store.update([new], v[:1] * -1)
    assert store.get(["c1"])[0].text == "replaced text"
    assert store.get_vectors(["c1"])[0] == pytest.approx(-v[0], abs=1e-6)
    assert store.search(-v[0], 1)[0].chunk.chunk_id == "c1"
    # BM25 sees the change too
    assert store.sparse_search("replaced", 3)[0].chunk.chunk_id == "c1"
    with pytest.raises(ValueError, match="expected shape"):
        store.add(chunks[:2], v[:3])


def matches_ref(c: Chunk, where: dict) -> bool:
    meta = c.meta or {}
    return all((meta.get(k) in w) if isinstance(w, list) else meta.get(k) == w
               for k, w in where.items())


def test_local_roundtrip_and_hnsw_recall(tmp_path: Path) -> None:
    chunks, v = _data(3000, seed=1)
    s = LocalStore(tmp_path / "idx", dim=DIM, ann_threshold=1000)
    s.add(chunks, v)
    s.save()
    assert (tmp_path / "idx" / "CURRENT").read_text().strip() == "gen-000001"
    s2 = LocalStore.open(tmp_path / "idx")
    s2.ann_threshold = 1000
    assert s2._ann is not None and s2._ann.ntotal == 3000  # HNSW persisted, not rebuilt
    rng = np.random.default_rng(2)
    recall = []
    for _ in range(30):
        q = rng.normal(size=DIM).astype(np.float32)
        q /= np.linalg.norm(q)
        got = {h.chunk.chunk_id for h in s2.search(q, 10)}
        recall.append(len(got & {f"c{i}" for i in _brute(v, q, 10)}) / 10)
        allowed = np.array([c.meta["lang"] == "fr" for c in chunks])
        got_f = [h.chunk.chunk_id for h in s2.search(q, 10, {"lang": "fr"})]
        assert got_f == [f"c{i}" for i in _brute(v, q, 10, allowed)]  # narrow filter: exact
    assert np.mean(recall) >= 0.95
    assert s2.get(["c7"])[0] == chunks[7]


def test_corrupt_missing_and_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "idx"
    with pytest.raises(StoreError, match="no index here"):
        LocalStore.open(d)
    chunks, v = _data(50)
    s = LocalStore(d, dim=DIM)
    s.add(chunks, v)
    s.save()
    # interrupted save: the new generation is written, CURRENT never replaced
    import llmlab.rag.stores.local as local

    def boom(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(local, "atomic_write_bytes", boom)
    s.delete(["c0"])
    with pytest.raises(KeyboardInterrupt):
        s.save()
    monkeypatch.undo()
    again = LocalStore.open(d)
    assert len(again) == 50 and again.get(["c0"])[0] is not None
    again.save()  # a later save cleans up the abandoned generation
    assert sorted(p.name for p in d.iterdir()) == ["CURRENT", "gen-000002"]
    # a flipped byte is caught by the manifest checksums
    vec = d / "gen-000002" / "vectors.npy"
    raw = bytearray(vec.read_bytes())
    raw[-3] ^= 0xFF
    vec.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="vectors.npy: checksum mismatch"):
        LocalStore.open(d)
    (d / "CURRENT").unlink()
    with pytest.raises(StoreError, match="half-written"):
        LocalStore.open(d)
