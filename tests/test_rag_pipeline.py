"""The RAG engine end to end on real text (tests/data/rag_pydocs, from the Python docs):
retrieval checked against sentence-transformers + numpy, raw bm25s, and hand-fused RRF."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from llmlab.rag.evaluate import evaluate, load_qrels
from llmlab.rag.fuse import rrf
from llmlab.rag.pipeline import RagIndex

DATA = Path(__file__).parent / "data" / "rag_pydocs"


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> RagIndex:
    idx = RagIndex.create(tmp_path_factory.mktemp("rag") / "idx")
    stats = idx.index([DATA / "docs"], chunk_size=128, overlap=16, progress=False)
    assert stats.added == 40 and not stats.errors
    return RagIndex.open(idx.store.dir)  # reload from disk: tests see the persisted index


@pytest.fixture(scope="module")
def st_model():  # noqa: ANN201
    from sentence_transformers import SentenceTransformer

    from llmlab.weights.registry import _minilm_dir

    return SentenceTransformer(str(_minilm_dir()), device="cpu")


def test_chunks_point_into_the_source_files(index: RagIndex) -> None:
    for c in list(index.store.iter_chunks())[::7]:
        raw = (DATA / "docs" / c.source).read_text(encoding="utf-8")
        assert raw[c.start : c.end] == c.text


def test_dense_matches_sentence_transformers_and_numpy(index: RagIndex, st_model) -> None:  # noqa: ANN001
    chunks = list(index.store.iter_chunks())
    sample = chunks[::10]
    ref = st_model.encode([c.text for c in sample], normalize_embeddings=True)
    ours = index.store.get_vectors([c.chunk_id for c in sample])
    assert (ours * ref).sum(1).min() >= 0.995  # int8 ONNX vs fp32 reference
    query = "How do I read a file line by line?"
    qv = st_model.encode([query], normalize_embeddings=True)[0]
    allv = index.store.get_vectors([c.chunk_id for c in chunks])
    brute = [chunks[i].chunk_id for i in np.argsort(-(allv @ qv))[:5]]
    got = [h.chunk.chunk_id for h in index.retrieve(query, "dense", 5)]
    assert len(set(got) & set(brute)) >= 4


def test_bm25_matches_raw_bm25s(index: RagIndex) -> None:
    import bm25s

    from llmlab.rag.sparse import _stemmer

    chunks = list(index.store.iter_chunks())
    ref = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    ref.index(bm25s.tokenize([c.text for c in chunks], stopwords="en", stemmer=_stemmer(),
                             show_progress=False), show_progress=False)
    query = "exception handling with try and except"
    qt = bm25s.tokenize([query], stopwords="en", stemmer=_stemmer(), show_progress=False)
    rows, scores = ref.retrieve(qt, k=8, show_progress=False)
    got = index.retrieve(query, "bm25", 8)
    assert [h.chunk.chunk_id for h in got] == [chunks[r].chunk_id for r in rows[0]]
    assert [h.score for h in got] == pytest.approx(scores[0].tolist(), rel=1e-5)


def test_hybrid_is_rrf_of_dense_and_bm25(index: RagIndex) -> None:
    q = "list comprehensions"
    dense = [h.chunk.chunk_id for h in index.retrieve(q, "dense", 50)]
    sparse = [h.chunk.chunk_id for h in index.retrieve(q, "bm25", 50)]
    want = rrf([dense, sparse], k=60)[:5]
    got = index.retrieve(q, "hybrid", 5, candidates=50)
    assert [h.chunk.chunk_id for h in got] == [d for d, _ in want]
    assert [h.score for h in got] == pytest.approx([s for _, s in want])
    w = index.retrieve(q, "hybrid", 5, fusion="weighted", alpha=1.0, candidates=50)
    assert [h.chunk.chunk_id for h in w] == dense[:5]  # alpha=1: dense order
    with pytest.raises(ValueError, match="valid: dense, bm25, hybrid"):
        index.retrieve(q, "sparse", 5)


def test_retrieval_quality_on_python_docs(index: RagIndex) -> None:
    res = evaluate(index, load_qrels(DATA / "qrels.jsonl"), k=10, progress=False)
    for m in ("bm25", "dense", "hybrid"):
        assert res[m]["recall@10"] >= 0.8, res
        assert res[m]["ndcg@10"] >= 0.5, res
    assert res["hybrid"]["mrr"] >= max(res["bm25"]["mrr"], res["dense"]["mrr"]) - 0.05, res


def test_incremental_reindex(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    files = sorted((DATA / "docs").rglob("*.txt"))[:6]
    for f in files:
        dst = docs / f.relative_to(DATA / "docs")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
    idx = RagIndex.create(tmp_path / "idx")
    first = idx.index([docs], 96, 8, progress=False)
    assert (first.added, first.unchanged) == (6, 0)
    changed, gone = sorted(docs.rglob("*.txt"))[:2]
    changed.write_text(changed.read_text() + "\n\nA brand new closing paragraph.\n")
    gone.unlink()
    (docs / "new.md").write_text("# Fresh\n\nA new document about walruses.\n")
    (docs / "broken.txt").write_bytes(b"\xff\xfe bad")
    second = RagIndex.create(tmp_path / "idx").index([docs], 96, 8, progress=False)
    assert (second.added, second.updated, second.removed, second.unchanged) == (1, 1, 1, 4)
    assert second.vectors_reused >= 1  # the changed file's untouched chunks kept their vectors
    assert len(second.errors) == 1 and "broken.txt" in second.errors[0]
    idx = RagIndex.open(tmp_path / "idx")
    assert idx.retrieve("walruses", "bm25", 1)[0].chunk.source == "new.md"
    assert not [c for c in idx.store.iter_chunks() if c.doc_id == gone.relative_to(docs).as_posix()]
    third = idx.index([docs], 64, 8, progress=False)  # new chunk size: everything re-chunked
    assert third.updated == 6 and third.unchanged == 0
    man = json.loads((tmp_path / "idx" / (tmp_path / "idx" / "CURRENT").read_text().split()[0]
                      ).read_text())
    assert man["n_chunks"] == len(idx.store)


def test_pgvector_store_runs_bm25_and_hybrid_like_the_local_one(index: RagIndex) -> None:
    """The same chunks and vectors in the real PostgreSQL server (tests/conftest.py): BM25
    scores equal the local store's (and so bm25s's), and hybrid is their RRF."""
    import os
    import uuid

    from llmlab.rag.stores.pgvector import PgVectorStore

    dsn = os.environ.get("LLMLAB_PG_DSN")
    if not dsn:
        pytest.skip('LLMLAB_PG_DSN unset: run eval "$(bash scripts/services.sh)"')
    chunks = list(index.store.iter_chunks())
    pg = PgVectorStore(dsn, table=f"t_{uuid.uuid4().hex[:12]}")
    try:
        pg.add(chunks, index.store.get_vectors([c.chunk_id for c in chunks]))
        server = RagIndex(pg, embedder=index.embedder)
        for q in ("exception handling with try and except", "list comprehensions"):
            ours = index.retrieve(q, "bm25", 10)
            theirs = server.retrieve(q, "bm25", 10)
            assert [h.chunk.chunk_id for h in theirs] == [h.chunk.chunk_id for h in ours]
            assert [h.score for h in theirs] == pytest.approx([h.score for h in ours], rel=1e-5)
            dense = [h.chunk.chunk_id for h in server.retrieve(q, "dense", 50)]
            sparse = [h.chunk.chunk_id for h in server.retrieve(q, "bm25", 50)]
            got = server.retrieve(q, "hybrid", 5, candidates=50)
            assert [h.chunk.chunk_id for h in got] == [d for d, _ in rrf([dense, sparse])[:5]]
        doc = chunks[0].doc_id
        hits = server.retrieve("the", "bm25", 5, where={"doc_id": doc})  # only stopwords
        assert hits == []
        hits = server.retrieve("python", "hybrid", 5, where={"doc_id": doc})
        assert hits and all(h.chunk.doc_id == doc for h in hits)
    finally:
        pg.drop()
        pg.close()
