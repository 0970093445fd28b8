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
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import APIRouter, File, Form, UploadFile
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

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def embed(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> Any:
        enc, texts = self.hub.enc(), list(texts)
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        for s in range(0, len(texts), 16):
            # One small batch per turn of the model lock: building a knowledge base takes
            # many seconds, and chat steps and attention maps interleave with it.
            out.append(self.hub.run(enc.embed, texts[s : s + 16], batch_size=16).numpy())
        return np.concatenate(out)


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
ALLOWED_EXT = (".txt", ".md", ".rst", ".html")


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

    def __init__(self, root: Path, cap: int, ttl: float) -> None:
        self.root, self.cap, self.ttl = root, cap, ttl
        self._last: OrderedDict[str, float] = OrderedDict()  # sid -> last use

    def get(self, sid: str | None) -> Path | None:
        if not sid or sid not in self._last:
            return None
        self._last[sid] = time.monotonic()
        self._last.move_to_end(sid)
        return self.root / sid

    def open(self, sid: str) -> tuple[Path, list[str]]:
        """The folder for `sid` (32 hex chars: no traversal), created if new; and the ids
        of sessions evicted to make room."""
        gone = self.expire()
        if sid not in self._last:
            while len(self._last) >= self.cap:
                gone.append(self._drop(next(iter(self._last))))
            (self.root / sid).mkdir(exist_ok=True)
            self._last[sid] = 0.0
        self.get(sid)  # marks it used now
        return self.root / sid, gone

    def expire(self) -> list[str]:
        now = time.monotonic()
        return [self._drop(sid) for sid, t in list(self._last.items()) if now - t > self.ttl]

    def _drop(self, sid: str) -> str:
        del self._last[sid]
        shutil.rmtree(self.root / sid, ignore_errors=True)
        return sid

    def __len__(self) -> int:
        return len(self._last)


def make_router(hub: Hub) -> APIRouter:
    router = APIRouter(prefix="/api/rag")
    cfg = hub.cfg
    updir = Path(tempfile.mkdtemp(prefix="llmlab-uploads-"))
    hub.cleanups.append(lambda: shutil.rmtree(updir, ignore_errors=True))
    sessions = UploadSessions(updir, cfg.max_sessions, cfg.session_ttl_s)
    # (chunk_size, session, files stamp) -> (index, its temp dir); least recently used first
    kbs: OrderedDict[tuple, Any] = OrderedDict()
    lock = threading.Lock()
    build_lock = threading.Lock()

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

    def kb(eng: dict[str, Any], chunk_size: int, session: str | None) -> Any:
        with lock:
            forget(sessions.expire())
            sdir = sessions.get(session)
            stamp = ""
            if sdir is not None:
                names = ",".join(sorted(p.name for p in sdir.iterdir()))
                stamp = hashlib.sha1(names.encode()).hexdigest()
        key = (chunk_size, session if sdir else None, stamp)
        with build_lock:  # one build at a time: concurrent first queries share it
            with lock:
                if key in kbs:
                    kbs.move_to_end(key)
                    return kbs[key][0]
            tmp = tempfile.TemporaryDirectory(prefix="llmlab-kb-")
            idx = eng["pipeline"].RagIndex.create(tmp.name, embedder=_HubEmbedder(hub))
            paths: list[Any] = [*default_kb(), *([sdir] if sdir else [])]
            idx.index(paths, chunk_size=chunk_size, overlap=chunk_size // 8, progress=False)
        with lock:
            kbs[key] = (idx, tmp)
            while len(kbs) > cfg.kb_cache:  # each holds vectors for a few hundred chunks
                kbs.popitem(last=False)[1][1].cleanup()
        return idx

    if engine() is not None:  # the default knowledge base is built with the preloaded models
        hub.warmups.append(lambda: kb(need(), RagQuery.model_fields["chunk_size"].default, None))

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
        file: Annotated[UploadFile, File()], session: Annotated[str | None, Form()] = None
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
            sdir, gone = sessions.open(sid)
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
        chunks = list(idx.store.iter_chunks())
        pos = {c.chunk_id: i for i, c in enumerate(chunks)}
        vecs = idx.store.get_vectors([c.chunk_id for c in chunks])
        proj = project_2d(torch.from_numpy(np.asarray(vecs)), torch.from_numpy(qv))
        return {
            "hits": hits,
            "search": {
                "method": req.method,
                "rerank": req.rerank,
                "docs": len({c.doc_id for c in chunks}),
                "chunks": len(chunks),
                "projection": {
                    "points": proj["points"],
                    "query": proj["extra"][0],
                    "explained": proj["explained"],
                    "retrieved": [pos[h.chunk.chunk_id] for h in hits],
                    "labels": [c.title or c.source for c in chunks],
                },
            },
            "retrieve": [
                {
                    "rank": h.rank,
                    "score": h.score,
                    "cosine": h.cosine,
                    "source": h.chunk.source,
                    "title": h.chunk.title,
                    "text": h.chunk.text,
                    "index": pos[h.chunk.chunk_id],
                }
                for h in hits
            ],
        }

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
            idx = await run_in_threadpool(kb, eng, req.chunk_size, req.session)
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
