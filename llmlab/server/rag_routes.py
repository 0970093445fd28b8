"""RAG page routes: a thin adapter over `llmlab.rag` (the retrieval engine, its own branch).

Everything computed here comes from the engine: `RagIndex` (chunking, MiniLM vectors, BM25,
hybrid fusion), `LLMReranker`, `AnswerStream` (grounded answer with checked [n] citations),
and `llmlab.explain.projection` for the 2-D map. This module only builds a knowledge base,
keeps it per (chunk size, uploaded docs), and turns each stage into a server-sent event.
When `llmlab.rag` is not importable every route answers 503 "RAG engine not installed".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import numpy as np
import torch
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from llmlab.explain.projection import project_2d
from llmlab.server.errors import ApiError, sse_error
from llmlab.server.hub import Hub

EXAMPLES = [
    "How do I read a file line by line?",
    "What does the with statement do?",
    "How do I handle an exception?",
]
# The bundled knowledge base: a slice of the Python tutorial (Debian's python3.11-doc),
# falling back to this project's own docs when that package is absent.
PY_TUTORIAL = Path("/usr/share/doc/python3.11/html/_sources/tutorial")
KB_FILES = (
    "inputoutput.rst.txt",
    "controlflow.rst.txt",
    "errors.rst.txt",
    "datastructures.rst.txt",
)


def default_kb() -> list[Path]:
    files = [PY_TUTORIAL / f for f in KB_FILES if (PY_TUTORIAL / f).exists()]
    if files:
        return files
    root = Path(__file__).resolve().parents[2]
    return [p for p in (root / "README.md", root / "BENCHMARKS.md") if p.exists()]


def engine() -> Any:
    try:
        from llmlab.rag import answer, pipeline, rerank
    except ImportError:
        return None
    return {"pipeline": pipeline, "answer": answer, "rerank": rerank}


class _HubEmbedder:
    """The engine's Embedder interface over the server's already-loaded MiniLM."""

    name = "torch"
    dim = 384

    def __init__(self, hub: Hub, check: Callable[[], None] | None = None) -> None:
        self.hub, self.check = hub, check

    def embed(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> Any:
        enc, texts = self.hub.enc(), list(texts)
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        for s in range(0, len(texts), 16):
            if self.check is not None:  # raises when the build is abandoned or over time
                self.check()
            # One small batch per turn of the model lock: building a knowledge base takes
            # many seconds, and chat steps and attention maps interleave with it.
            out.append(self.hub.run(enc.embed, texts[s : s + 16], batch_size=16).numpy())
        return np.concatenate(out)


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
ALLOWED_EXT = (".txt", ".md", ".rst", ".html")
# Bounds on what one response may hold, so every response is bounded by construction (the
# bounds on builds and sessions are ServerConfig fields, so `llmlab serve` flags).
MAX_LABEL_CHARS = 48  # a projection point's label (its document's title)
MAX_HIT_CHARS = 8000  # a retrieved chunk's text (1000 tokens are ~4-5k characters)
MAX_POINTS = 4000  # projection points sent
# Temp folders carry our pid, so a start-up sweep can tell a dead server's folders from
# a live one's.
KB_PREFIX, UPLOADS_PREFIX = "llmlab-kb-", "llmlab-uploads-"
_OURS = re.compile(rf"(?:{KB_PREFIX}|{UPLOADS_PREFIX})(\d+)-")


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_stale(root: Path | None = None) -> list[Path]:
    """Delete the index and upload folders that servers killed without a clean shutdown
    (SIGKILL, a crash) left in `root` (the temp dir): only folders of ours, owned by this
    user, whose pid in the name is no longer running. Returns what was removed."""
    root = Path(root or tempfile.gettempdir())
    gone = []
    for p in root.iterdir():
        m = _OURS.match(p.name)
        try:
            ours = m is not None and p.is_dir() and not p.is_symlink() \
                and p.stat().st_uid == os.getuid()
        except OSError:
            continue
        if ours and m is not None and int(m.group(1)) != os.getpid() \
                and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


class BuildCancelled(Exception):
    """Every client waiting for an index build left, or the server is shutting down."""


class _Build:
    """An index build in progress, shared by the requests that want the same index."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.idx: Any = None
        self.error: BaseException | None = None
        self.clients: list[threading.Event] = []  # set when that request's client left

    def abandoned(self) -> bool:
        return all(gone.is_set() for gone in self.clients)


def safe_name(name: str) -> str:
    """Keep only the final component, in a safe alphabet: no "..", no slashes, no NULs."""
    base = name.replace("\\", "/").split("/")[-1]
    base = _SAFE.sub("_", base).lstrip(".")[:80]
    return base or "upload.txt"


class RagQuery(BaseModel):
    query: str = Field(min_length=1, max_length=500)
    k: int = Field(4, ge=1, le=10)
    method: Literal["dense", "bm25", "hybrid"] = "hybrid"
    rerank: bool = False
    chunk_size: int = Field(200, ge=50, le=1000)
    session: str | None = Field(None, max_length=64)


class UploadSessions:
    """Upload folders, one per browser session: at most `cap` (the least recently used one
    goes first), each deleted after `ttl` seconds without use, so disk and the indexes built
    from them stay bounded however many visitors come and go."""

    def __init__(
        self, root: Path, cap: int, ttl: float, per_client: int | None = None
    ) -> None:
        self.root, self.cap, self.ttl, self.per_client = root, cap, ttl, per_client
        self._last: OrderedDict[str, float] = OrderedDict()  # sid -> last use
        # sid -> client address: one client may hold only `per_client` sessions, so it
        # can't push every other visitor's uploads out of the LRU.
        self._owner: dict[str, str] = {}

    def get(self, sid: str | None) -> Path | None:
        if not sid or sid not in self._last:
            return None
        self._last[sid] = time.monotonic()
        self._last.move_to_end(sid)
        return self.root / sid

    def open(self, sid: str, client: str = "") -> tuple[Path, list[str]]:
        """The folder for `sid` (32 hex chars: no traversal), created if new; and the ids
        of sessions evicted to make room. A client at its `per_client` cap gets a 429."""
        gone = self.expire()
        if sid not in self._last:
            held = sum(1 for c in self._owner.values() if c == client)
            if self.per_client is not None and held >= self.per_client:
                raise ApiError(
                    429,
                    f"session: this client already holds {held} upload sessions, the limit "
                    f"per client (max_client_sessions={self.per_client}); upload into one "
                    f"of them (pass its session id) or wait {self.ttl:.0f} s for one to expire",
                    "session",
                )
            while len(self._last) >= self.cap:
                gone.append(self._drop(next(iter(self._last))))
            (self.root / sid).mkdir(exist_ok=True)
            self._last[sid] = 0.0
            self._owner[sid] = client
        self.get(sid)  # marks it used now
        return self.root / sid, gone

    def expire(self) -> list[str]:
        now = time.monotonic()
        return [self._drop(sid) for sid, t in list(self._last.items()) if now - t > self.ttl]

    def _drop(self, sid: str) -> str:
        del self._last[sid]
        self._owner.pop(sid, None)
        shutil.rmtree(self.root / sid, ignore_errors=True)
        return sid

    def __len__(self) -> int:
        return len(self._last)

    def __contains__(self, sid: object) -> bool:  # without marking it used
        return sid in self._last


def make_router(hub: Hub) -> APIRouter:
    router = APIRouter(prefix="/api/rag")
    cfg = hub.cfg
    sweep_stale()  # what a killed server left behind
    updir = Path(tempfile.mkdtemp(prefix=f"{UPLOADS_PREFIX}{os.getpid()}-"))
    sessions = UploadSessions(
        updir, cfg.max_sessions, cfg.session_ttl_s, cfg.max_client_sessions
    )
    # (chunk_size, session, content hash) -> (index, its temp dir); least recently used first
    kbs: OrderedDict[tuple, Any] = OrderedDict()
    builds: dict[tuple, _Build] = {}  # key -> the build in progress for it
    lock = threading.Lock()  # guards sessions, kbs and builds; never held during a build
    closing = threading.Event()
    default_key = (RagQuery.model_fields["chunk_size"].default, None, "")

    def close() -> None:
        closing.set()  # running builds stop at their next batch and delete their folders
        with lock:
            running = list(builds.values())
        for b in running:  # a batch takes well under a second; a stuck one can't hold exit
            b.done.wait(timeout=10)
        with lock:
            for _, tmp in kbs.values():
                tmp.cleanup()
            kbs.clear()
        shutil.rmtree(updir, ignore_errors=True)
        # A build thread that outlived the wait dies with the process: its folder goes now.
        for p in Path(tempfile.gettempdir()).glob(f"{KB_PREFIX}{os.getpid()}-*"):
            shutil.rmtree(p, ignore_errors=True)

    hub.cleanups.append(close)

    def need() -> dict[str, Any]:
        eng = engine()
        if eng is None:
            raise ApiError(
                503, "RAG engine not installed (llmlab.rag is missing)", None, "service_unavailable"
            )
        return eng

    def forget(gone: list[str]) -> None:
        """Drop the indexes of removed sessions (called with `lock` held)."""
        for key in [k for k in kbs if k[1] in gone]:
            kbs.pop(key)[1].cleanup()

    def key_of(chunk_size: int, sdir: Path | None) -> tuple:
        """The cache key: the uploads' names and contents, so a re-uploaded file with the
        same name gets a fresh index (called with `lock` held: uploads write under it)."""
        if sdir is None:
            return (chunk_size, None, "")
        h = hashlib.sha256()
        for f in sorted(sdir.iterdir()):
            h.update(f"{f.name}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\0".encode())
        return (chunk_size, sdir.name, h.hexdigest())

    def build(eng: dict[str, Any], b: _Build, key: tuple, sdir: Path | None) -> None:
        """Build the index for `key` into `b`; only one thread builds a given key."""
        deadline = time.monotonic() + cfg.max_build_s

        def check() -> None:
            if closing.is_set() or b.abandoned():
                raise BuildCancelled("the index build was cancelled: its clients left")
            if time.monotonic() > deadline:
                raise ValueError(
                    f"chunk_size: building the index took over {cfg.max_build_s:.0f}"
                    " s; use a larger chunk_size or fewer documents"
                )

        tmp = tempfile.TemporaryDirectory(prefix=f"{KB_PREFIX}{os.getpid()}-")
        try:
            emb = _HubEmbedder(hub, check)
            idx = eng["pipeline"].RagIndex.create(tmp.name, embedder=emb)
            paths: list[Any] = [*default_kb(), *([sdir] if sdir else [])]
            chunk_size = key[0]
            idx.index(paths, chunk_size=chunk_size, overlap=chunk_size // 8, progress=False,
                      max_chunks=cfg.max_build_chunks)
            check()
            emb.check = None  # built: its queries embed whoever asks
        except BaseException as e:
            tmp.cleanup()
            b.error = e
        else:
            b.idx = idx
            with lock:
                if closing.is_set():  # close() already emptied the cache
                    tmp.cleanup()
                    return
                kbs[key] = (idx, tmp)
                # The default index is never evicted: other visitors' chunk sizes and
                # uploads can't force it to be rebuilt.
                while len(kbs) > cfg.kb_cache:
                    old = next((k for k in kbs if k != default_key), None)
                    if old is None or old == key:
                        break
                    kbs.pop(old)[1].cleanup()
        finally:
            with lock:
                builds.pop(key, None)
            b.done.set()

    def kb(
        eng: dict[str, Any], chunk_size: int, session: str | None,
        gone: threading.Event | None = None,
    ) -> Any:
        """The index for (chunk size, session). A cached one is returned at once, never
        waiting on a build; a missing one is built once however many requests want it, and
        the build stops when all of them have left (`gone` is set when this one's client
        disconnects)."""
        gone = gone or threading.Event()
        while True:
            with lock:
                forget(sessions.expire())
                key = key_of(chunk_size, sessions.get(session))
                if key in kbs:
                    kbs.move_to_end(key)
                    return kbs[key][0]
                b = builds.get(key)
                owner = b is None
                if b is None:
                    b = builds[key] = _Build()
                b.clients.append(gone)
            if owner:
                build(eng, b, key, None if key[1] is None else updir / key[1])
            else:
                while not b.done.wait(0.2):
                    if gone.is_set() or closing.is_set():
                        raise BuildCancelled("the client left while the index was built")
            if b.idx is not None:
                return b.idx
            if isinstance(b.error, BuildCancelled) and not gone.is_set() \
                    and not closing.is_set():
                continue  # the clients of that build left just as this one came: build anew
            assert b.error is not None
            raise b.error

    counts: dict[tuple[str, int], int] = {}  # (document sha256, chunk size) -> chunks

    def check_size(chunk_size: int, session: str | None) -> None:
        """A 413 naming chunk_size, before the stream starts, when the index to build would
        have more than max_build_chunks chunks. Chunking costs far less than embedding, and
        each document's count is remembered; the build checks again (the files may change)."""
        from llmlab.rag.chunk import chunk_text
        from llmlab.rag.ingest import load_documents

        with lock:
            sdir = sessions.get(session)
            key = key_of(chunk_size, sdir)
            if key in kbs or key in builds:
                return
        limit, n = cfg.max_build_chunks, 0
        for d in load_documents([*default_kb(), *([sdir] if sdir else [])], errors=[]):
            if (d.sha256, chunk_size) not in counts:
                if len(counts) > 4096:  # a bound on the memo itself
                    counts.clear()
                counts[d.sha256, chunk_size] = len(chunk_text(d.text, chunk_size, chunk_size // 8))
            n += counts[d.sha256, chunk_size]
            if n > limit:
                raise ApiError(
                    413,
                    f"chunk_size: {chunk_size} cuts these documents into more than {limit} "
                    "chunks, the limit per index; use a larger chunk_size or fewer documents",
                    "chunk_size",
                )

    if engine() is not None:  # the default knowledge base is built with the preloaded models
        hub.warmups.append(lambda: kb(need(), default_key[0], None))

    @router.get("/info")
    def info() -> dict[str, Any]:
        return {
            "available": engine() is not None,
            "examples": EXAMPLES,
            "methods": ["dense", "bm25", "hybrid"],
            "kb": [p.name for p in default_kb()],
        }

    @router.post("/upload")
    async def upload(
        request: Request,
        file: Annotated[UploadFile, File()],
        session: Annotated[str | None, Form()] = None,
    ) -> dict:
        name = safe_name(file.filename or "upload.txt")
        if not name.lower().endswith(ALLOWED_EXT):
            raise ApiError(400, f"file: only {', '.join(ALLOWED_EXT)} files", "file")
        data = await file.read(hub.cfg.max_upload_bytes + 1)
        if len(data) > hub.cfg.max_upload_bytes:
            raise ApiError(413, f"file: larger than {hub.cfg.max_upload_bytes} bytes", "file")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ApiError(400, "file: not UTF-8 text", "file") from e
        sid = session if session and re.fullmatch(r"[a-f0-9]{32}", session) else uuid.uuid4().hex
        with lock:
            sdir, gone = sessions.open(sid, request.client.host if request.client else "")
            forget(gone)
            docs = list(sdir.iterdir())
            if len(docs) >= hub.cfg.max_session_docs:
                raise ApiError(400, f"file: at most {hub.cfg.max_session_docs} per session", "file")
            target = sdir / name
            assert target.resolve().parent == sdir.resolve()  # safe_name guarantees it
            target.write_bytes(data)
            n = len(docs) + (target not in docs)
        return {"session": sid, "name": name, "bytes": len(data), "docs": n}

    def search(eng: dict[str, Any], req: RagQuery, idx: Any, qv: np.ndarray) -> dict[str, Any]:
        """Retrieve (and rerank) under the model lock, then the 2-D map of every chunk."""
        reranker = eng["rerank"].LLMReranker(lm=hub.lm()) if req.rerank else None
        hits = hub.run(
            idx.retrieve,
            req.query,
            method=req.method,
            top_k=req.k,
            reranker=reranker,
            rerank_top=max(8, req.k),
        )
        return {"hits": hits, **search_events(req, idx, hits, qv)}

    @router.post("/query")
    def query(req: RagQuery) -> StreamingResponse:
        eng = need()
        with lock:
            if req.session and sessions.get(req.session) is None:
                raise ApiError(
                    404,
                    f"session: no upload session {req.session!r} (sessions end after "
                    f"{cfg.session_ttl_s:.0f} s idle); upload the documents again",
                    "session",
                )
        check_size(req.chunk_size, req.session)

        def ev(stage: str, **data: Any) -> str:
            return f"event: {stage}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

        async def events() -> AsyncIterator[str]:
            try:
                async for e in stages():
                    yield e
            except Exception as e:  # the 200 is sent: report it as a last event
                yield ev("error", **sse_error(e))

        async def stages() -> AsyncIterator[str]:
            # Blocking work runs in the thread pool; the answer streams from the shared
            # generation worker, and a client that leaves cancels it there.
            yield ev("query", query=req.query)
            gone = threading.Event()
            try:
                # abandon_on_cancel: a disconnect cancels this await at once (a plain
                # run_in_threadpool waits for the thread), so `gone` is set while the build
                # runs, and the building thread stops at its next batch.
                idx = await anyio.to_thread.run_sync(
                    kb, eng, req.chunk_size, req.session, gone, abandon_on_cancel=True
                )
            finally:
                gone.set()
            qv = await run_in_threadpool(hub.run, idx.embed_query, req.query)
            yield ev("embed", dims=int(qv.shape[0]))
            found = await run_in_threadpool(search, eng, req, idx, qv)
            yield ev("search", **found["search"])
            yield ev("retrieve", hits=found["retrieve"])
            lm = await run_in_threadpool(hub.gen_lm)
            stream = eng["answer"].AnswerStream(req.query, found["hits"], lm=lm, max_new_tokens=96)
            res = stream.refusal()
            if res is not None:
                yield ev("token", text=res.text)
            else:
                _, ids, params = stream.prompt()
                batcher = await run_in_threadpool(hub.batcher)
                raw = [stream.prefill]
                yield ev("token", text=raw[0])
                handle = batcher.submit(ids, params)
                try:
                    async for piece in handle:
                        raw.append(piece)
                        yield ev("token", text=piece)
                finally:
                    handle.cancel()
                res = stream.finish("".join(raw))
            # The engine's checked answer: invalid [n] removed, citations validated.
            yield ev(
                "done",
                answer=res.text,
                citations=[n for n, _ in res.citations],
                refused=res.refused,
                reason=res.reason,
            )

        return StreamingResponse(events(), media_type="text/event-stream")

    return router


def search_events(req: RagQuery, idx: Any, hits: list[Any], qv: np.ndarray) -> dict[str, Any]:
    """The `search` and `retrieve` events. Their size is bounded by construction: at most
    MAX_POINTS points, titles and sources sent once per document (points refer to them),
    labels and hit texts cut to fixed lengths."""
    chunks = list(idx.store.iter_chunks())
    step = -(-len(chunks) // MAX_POINTS) if chunks else 1  # every step-th chunk is drawn
    shown = chunks[::step]
    pos = {c.chunk_id: i for i, c in enumerate(shown)}
    for h in hits:  # retrieved chunks are always drawn
        if h.chunk.chunk_id not in pos:
            pos[h.chunk.chunk_id] = len(shown)
            shown.append(h.chunk)
    doc_ix: dict[str, int] = {}
    for c in shown:
        doc_ix.setdefault(c.doc_id, len(doc_ix))
    firsts = {c.doc_id: c for c in reversed(shown)}
    docs = [
        {"title": _short(firsts[d].title, MAX_LABEL_CHARS * 4),
         "source": _short(firsts[d].source, MAX_LABEL_CHARS * 4)}
        for d in doc_ix
    ]
    vecs = idx.store.get_vectors([c.chunk_id for c in shown])
    proj = project_2d(torch.from_numpy(np.asarray(vecs)), torch.from_numpy(qv))

    def r4(xy: list[float]) -> list[float]:
        return [round(v, 4) for v in xy]

    return {
        "search": {
            "method": req.method,
            "rerank": req.rerank,
            "docs": len({c.doc_id for c in chunks}),
            "chunks": len(chunks),
            "projection": {
                "points": [r4(p) for p in proj["points"]],
                "query": r4(proj["extra"][0]),
                "explained": proj["explained"],
                "retrieved": [pos[h.chunk.chunk_id] for h in hits],
                "doc_table": docs,  # once per event
                "doc": [doc_ix[c.doc_id] for c in shown],  # each point's row in doc_table
                # Tooltips for the page as it is: short, so repeating them is bounded.
                "labels": [_short(c.title or c.source, MAX_LABEL_CHARS) for c in shown],
                "sampled": step > 1,
            },
        },
        "retrieve": [
            {
                "rank": h.rank,
                "score": h.score,
                "cosine": h.cosine,
                "source": _short(h.chunk.source, MAX_LABEL_CHARS * 4),
                "title": _short(h.chunk.title, MAX_LABEL_CHARS * 4),
                "text": _short(h.chunk.text, MAX_HIT_CHARS),
                "index": pos[h.chunk.chunk_id],
            }
            for h in hits
        ],
    }
