"""The RAG routes stay bounded against a hostile client (issue #27): titles and responses
are capped, a build never blocks a cached lookup and stops when its client leaves, the
cache follows file contents, one client can't hold every upload session, and temp folders
don't outlive the server.

A real server on 127.0.0.1 with a fake MiniLM (hash vectors, optionally slow): no model
loads, each test gets its own server and config.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from llmlab.rag.ingest import MAX_TITLE_CHARS, Document, html_to_text
from llmlab.rag.sessions import sweep_stale
from llmlab.server.hub import ServerConfig
from llmlab.server.rag_routes import UploadSessions

from .conftest import Live, live_server


class FakeEnc:
    """MiniLM's `embed`, as unit vectors hashed from the text; `delay` s per call."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.calls = 0

    def embed(self, texts: list[str], batch_size: int = 16) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.delay)
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little")
            v = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
            rows.append(v / np.linalg.norm(v))
        return torch.from_numpy(np.stack(rows))


@pytest.fixture
def rag() -> Iterator[tuple[Live, FakeEnc]]:
    yield from _serve()


def _serve(**limits: Any) -> Iterator[tuple[Live, FakeEnc]]:
    cfg = ServerConfig(fast_decode=False, **limits)
    enc = FakeEnc()
    # The fake vectors are unrelated to the query, so every answer is the fixed refusal:
    # the chat model is never called.
    with live_server(cfg, lm=object(), enc=enc) as live:
        yield live, enc


def events(text: str) -> list[tuple[str, str]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], lines["data"]))
    return out


def query(live: Live, timeout: float = 60, **body: Any) -> dict[str, str]:
    r = httpx.post(f"{live.url}/api/rag/query", json={"query": "read a file", **body},
                   timeout=timeout)
    assert r.status_code == 200, r.text
    return dict(events(r.text))


def upload(live: Live, name: str, data: bytes, session: str | None = None) -> httpx.Response:
    form = {"session": session} if session else {}
    return httpx.post(f"{live.url}/api/rag/upload", files={"file": (name, data)}, data=form)


def words(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    vocab = ["alpha", "beta", "gamma", "delta", "file", "value", "return", "python", "loop"]
    paras = [" ".join(rng.choice(vocab, 60)) + "." for _ in range(n // 60 + 1)]
    return "\n\n".join(paras)


# ---- item 2: title amplification ----------------------------------------------------------


def test_unclosed_title_does_not_swallow_the_document() -> None:
    text, title = html_to_text("<p>body one</p><title>" + "T" * 5000 + "<p>body two</p>")
    assert title == "" and "body one" in text and "body two" in text and "T" * 5000 in text
    text, title = html_to_text("<title>Hi &amp; there</title><p>x</p>")
    assert (text, title) == ("x", "Hi & there")
    assert len(Document("d", "d", "T" * 10_000, "x").title) == MAX_TITLE_CHARS


def test_hostile_title_keeps_the_search_event_small(rag: tuple[Live, FakeEnc]) -> None:
    live, _ = rag
    # The probe's file scaled down 10x: body text, then a 30 KB <title> never closed.
    body = "".join(f"<p>{p}</p>" for p in words(3000).split("\n\n"))
    page = f"<html><body>{body}<title>{'A' * 30_000} " + "B " * 5000
    r = upload(live, "hostile.html", page.encode())
    assert r.status_code == 200
    ev = query(live, chunk_size=50, session=r.json()["session"], method="bm25")
    search = json.loads(ev["search"])
    n = search["chunks"]
    assert n > 800  # the default KB at 50 tokens is 766 chunks, plus the upload's
    # Before the fix every chunk's label repeated the 30 KB title: ~30 MB.
    assert len(ev["search"]) < 150 * n, len(ev["search"])
    proj = search["projection"]
    assert max(len(label) for label in proj["labels"]) <= 48
    assert len(proj["doc"]) == len(proj["points"]) == n
    assert all(len(d["title"]) <= MAX_TITLE_CHARS for d in proj["doc_table"])
    hits = json.loads(ev["retrieve"])["hits"]
    assert hits and all(len(h["title"]) <= MAX_TITLE_CHARS for h in hits)


# ---- item 6: a build neither blocks cached lookups nor outlives its client ---------------


def _kb_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(f"llmlab-kb-{os.getpid()}-*")}


def test_cached_lookup_does_not_wait_for_a_build(rag: tuple[Live, FakeEnc]) -> None:
    live, enc = rag
    query(live)  # the default index, now cached
    sid = upload(live, "doc.txt", words(2000).encode()).json()["session"]
    enc.delay = 0.1  # per 16 chunks: the session's ~900-chunk build takes ~6 s
    slow: dict[str, Any] = {}
    c0 = enc.calls
    t = threading.Thread(target=lambda: slow.update(query(live, chunk_size=50, session=sid)))
    t.start()
    while enc.calls < c0 + 3:
        time.sleep(0.02)
    t0 = time.monotonic()
    query(live)
    took = time.monotonic() - t0
    assert t.is_alive() and not slow  # the build is still going
    assert took < 2.0, took  # before the fix it waited for the whole build
    t.join(60)
    assert "search" in slow


def test_build_stops_when_its_client_leaves(rag: tuple[Live, FakeEnc]) -> None:
    live, enc = rag
    sid = upload(live, "doc.txt", words(2000).encode()).json()["session"]
    before = _kb_dirs()
    enc.delay = 0.1
    with httpx.stream("POST", f"{live.url}/api/rag/query",
                      json={"query": "x", "chunk_size": 50, "session": sid}) as r:
        lines = r.iter_lines()  # kept: a dropped iterator closes the connection
        next(lines)  # the `query` event: the build has started
        while enc.calls < 3:
            time.sleep(0.02)
        assert _kb_dirs() - before  # its folder
    # Closed: the build must stop within a few batches and delete its folder.
    deadline = time.monotonic() + 5
    while _kb_dirs() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _kb_dirs() - before
    calls = enc.calls
    time.sleep(0.5)
    assert enc.calls == calls  # nothing embeds any more (a full build is ~60 calls)


@pytest.fixture
def capped() -> Iterator[tuple[Live, FakeEnc]]:
    yield from _serve(max_build_chunks=900)


def test_chunk_cap_is_a_clear_413(capped: tuple[Live, FakeEnc]) -> None:
    live, enc = capped
    sid = upload(live, "big.txt", words(20_000).encode()).json()["session"]
    t0 = time.monotonic()
    r = httpx.post(f"{live.url}/api/rag/query",
                   json={"query": "x", "chunk_size": 50, "session": sid}, timeout=60)
    assert r.status_code == 413, r.text[:300]
    err = r.json()["error"]
    assert err["param"] == "chunk_size" and "more than 900 chunks" in err["message"], err
    assert enc.calls == 0 and time.monotonic() - t0 < 10  # refused before embedding anything
    assert query(live, chunk_size=200, session=sid)["search"]  # a larger chunk size fits


def test_index_refuses_more_chunks_than_allowed(tmp_path: Path) -> None:
    """The build's own cap (the files may change after the route's check)."""
    from llmlab.rag.pipeline import IndexLimitError, RagIndex

    class Emb:
        name, dim = "fake", 384

        def embed(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> Any:
            raise AssertionError("nothing may be embedded")

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(words(3000))
    idx = RagIndex.create(tmp_path / "idx", embedder=Emb())
    with pytest.raises(IndexLimitError, match="chunk_size: 50 .* more than 10 chunks"):
        idx.index([tmp_path / "docs"], chunk_size=50, overlap=6, progress=False, max_chunks=10)
    assert len(idx.store) == 0


# ---- item 7: the cache follows file contents ---------------------------------------------


def test_reuploaded_file_replaces_the_old_content(rag: tuple[Live, FakeEnc]) -> None:
    live, _ = rag
    sid = upload(live, "secret.txt", b"The vault password is zanzibar.").json()["session"]

    def top() -> str:
        ev = query(live, query="vault password", method="bm25", k=1, session=sid)
        return json.loads(ev["retrieve"])["hits"][0]["text"]

    assert "zanzibar" in top()
    assert upload(live, "secret.txt", b"The vault password is quokka.", sid).status_code == 200
    assert "quokka" in top()  # before the fix: zanzibar, from the cached index


# ---- item 12: one client can't hold every upload session ---------------------------------


@pytest.fixture
def few() -> Iterator[tuple[Live, FakeEnc]]:
    yield from _serve(max_client_sessions=3)


def test_per_client_session_limit(few: tuple[Live, FakeEnc]) -> None:
    live, _ = few
    sids = [upload(live, "a.txt", b"hello").json()["session"] for _ in range(3)]
    r = upload(live, "a.txt", b"hello")
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["param"] == "session" and "max_client_sessions=3" in err["message"]
    assert upload(live, "b.txt", b"more", sids[0]).status_code == 200  # its own: fine


def test_upload_sessions_are_capped_per_client(tmp_path: Path) -> None:
    from llmlab.server.errors import ApiError

    s = UploadSessions(tmp_path, cap=10, ttl=60, per_client=2)
    s.open("a" * 32, "10.0.0.1")
    s.open("b" * 32, "10.0.0.1")
    with pytest.raises(ApiError) as e:
        s.open("c" * 32, "10.0.0.1")
    assert e.value.status == 429
    s.open("c" * 32, "10.0.0.2")  # another client is not affected
    s.open("a" * 32, "10.0.0.1")  # reusing a held session is not a new one


# ---- item 13: temp folders don't outlive the server --------------------------------------


def test_sweep_removes_only_dead_servers_folders(tmp_path: Path) -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    dead, me = p.pid, os.getpid()
    names = [f"llmlab-kb-{dead}-x1", f"llmlab-uploads-{dead}-x2", f"llmlab-kb-{me}-x3",
             "llmlab-kb-1-x4", "llmlab-kb-oldstyle", "something-else"]
    for n in names:
        (tmp_path / n).mkdir()
        (tmp_path / n / "doc.txt").write_text("uploaded text")
    gone = sweep_stale(tmp_path)
    assert sorted(p.name for p in gone) == names[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


def test_shutdown_removes_index_and_upload_folders() -> None:
    mine = f"llmlab-*-{os.getpid()}-*"
    before = set(Path(tempfile.gettempdir()).glob(mine))
    for live, _ in _serve():
        upload(live, "doc.txt", b"some text to index")
        query(live)
        made = set(Path(tempfile.gettempdir()).glob(mine)) - before
        assert len(made) >= 2  # the uploads folder and at least one index
    assert not any(p.exists() for p in made)


def test_search_events_are_bounded_by_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """However big the index, the events hold at most MAX_POINTS (+ hits) points, one
    table row per document, and capped labels and texts."""
    from types import SimpleNamespace

    from llmlab.rag.chunk import Chunk
    from llmlab.rag.pipeline import Retrieved
    from llmlab.server import rag_routes
    from llmlab.server.rag_routes import RagQuery, search_events

    monkeypatch.setattr(rag_routes, "MAX_POINTS", 100)
    chunks = [Chunk(f"d{i % 3}::c{i}", f"d{i % 3}", f"src{i % 3}.txt", "T" * 5000,
                    "x" * 20_000, 0, 1, 1) for i in range(1000)]
    vecs = {c.chunk_id: v for c, v in
            zip(chunks, FakeEnc().embed([c.chunk_id for c in chunks]).numpy(), strict=True)}
    store = SimpleNamespace(iter_chunks=lambda: iter(chunks),
                            get_vectors=lambda ids: np.stack([vecs[i] for i in ids]))
    hits = [Retrieved(chunks[i], 1.0, 0.5, r) for r, i in enumerate((1, 999), 1)]
    out = search_events(RagQuery(query="q"), SimpleNamespace(store=store), hits,
                        vecs[chunks[0].chunk_id])
    proj = out["search"]["projection"]
    assert out["search"]["chunks"] == 1000 and proj["sampled"]
    assert len(proj["points"]) == len(proj["labels"]) == len(proj["doc"]) <= 100 + len(hits)
    assert len(proj["doc_table"]) == 3 and max(map(len, proj["labels"])) <= 48
    assert [proj["doc_table"][proj["doc"][i]]["source"] for i in proj["retrieved"]] == [
        "src1.txt", "src0.txt"]
    assert all(len(h["text"]) <= rag_routes.MAX_HIT_CHARS for h in out["retrieve"])
    assert len(json.dumps(out["search"])) < 20_000
