"""RAG page routes: HTTP over `llmlab.rag`.

Everything computed here comes from the library: `KnowledgeBases` (upload sessions and the
indexes built on them, bounded), `RagIndex` (chunking, MiniLM vectors, BM25, hybrid
fusion), `LLMReranker`, `AnswerStream` (grounded answer with checked [n] citations), and
`llmlab.explain.projection` for the 2-D map. This module parses requests, answers 4xx, and
turns each stage into a server-sent event.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import AsyncIterator
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
from llmlab.rag import sessions
from llmlab.rag.answer import AnswerStream
from llmlab.rag.pipeline import IndexLimitError, RagIndex, Retrieved
from llmlab.rag.rerank import LLMReranker
from llmlab.rag.sessions import KnowledgeBases, safe_name
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


ALLOWED_EXT = (".txt", ".md", ".rst", ".html")
# Bounds on what one response may hold, so every response is bounded by construction (the
# bounds on builds and sessions are ServerConfig fields, so `llmlab serve` flags).
MAX_LABEL_CHARS = 48  # a projection point's label (its document's title)
MAX_HIT_CHARS = 8000  # a retrieved chunk's text (1000 tokens are ~4-5k characters)
MAX_POINTS = 4000  # projection points sent


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


class RagQuery(BaseModel):
    query: str = Field(min_length=1, max_length=500)
    k: int = Field(4, ge=1, le=10)
    method: Literal["dense", "bm25", "hybrid"] = "hybrid"
    rerank: bool = False
    chunk_size: int = Field(200, ge=50, le=1000)
    session: str | None = Field(None, max_length=64)


class UploadSessions(sessions.UploadSessions):
    """The library's upload sessions; a client over its per-client cap is an HTTP 429."""

    def open(self, sid: str, client: str = "") -> tuple[Path, list[str]]:
        try:
            return super().open(sid, client)
        except sessions.SessionLimitError as e:
            raise ApiError(429, str(e), "session") from e


def make_router(hub: Hub) -> APIRouter:
    router = APIRouter(prefix="/api/rag")
    cfg = hub.cfg
    base = default_kb()
    default_chunk_size = RagQuery.model_fields["chunk_size"].default

    def embed_batch(texts: list[str]) -> np.ndarray:
        # One small batch per turn of the model lock: chat steps interleave with a build.
        return hub.run(hub.enc().embed, texts, batch_size=sessions.EMBED_BATCH).numpy()

    kbs = KnowledgeBases(
        UploadSessions.temporary(cfg.max_sessions, cfg.session_ttl_s, cfg.max_client_sessions),
        base, embed_batch, cache=cfg.kb_cache, max_chunks=cfg.max_build_chunks,
        max_build_s=cfg.max_build_s, max_docs=cfg.max_session_docs,
        default_chunk_size=default_chunk_size,
    )
    hub.cleanups.append(kbs.close)
    # The default knowledge base is built with the preloaded models.
    hub.warmups.append(lambda: kbs.get(default_chunk_size, None))

    @router.get("/info")
    def info() -> dict[str, Any]:
        return {
            "available": True,
            "examples": EXAMPLES,
            "methods": ["dense", "bm25", "hybrid"],
            "kb": [p.name for p in base],
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
        data = await file.read(cfg.max_upload_bytes + 1)
        if len(data) > cfg.max_upload_bytes:
            raise ApiError(413, f"file: larger than {cfg.max_upload_bytes} bytes", "file")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ApiError(400, "file: not UTF-8 text", "file") from e
        sid = session if session and re.fullmatch(r"[a-f0-9]{32}", session) else uuid.uuid4().hex
        client = request.client.host if request.client else ""
        name, n = kbs.add_document(sid, client, name, data)
        return {"session": sid, "name": name, "bytes": len(data), "docs": n}

    def search(req: RagQuery, idx: RagIndex, qv: np.ndarray) -> dict[str, Any]:
        """Retrieve (and rerank) under the model lock, then the 2-D map of every chunk."""
        reranker = LLMReranker(lm=hub.lm()) if req.rerank else None
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
        if req.session and not kbs.touch(req.session):
            raise ApiError(
                404,
                f"session: no upload session {req.session!r} (sessions end after "
                f"{cfg.session_ttl_s:.0f} s idle); upload the documents again",
                "session",
            )
        try:  # refused before the stream starts, and before anything is embedded
            kbs.check_size(req.chunk_size, req.session)
        except IndexLimitError as e:
            raise ApiError(413, str(e), "chunk_size") from e

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
                    kbs.get, req.chunk_size, req.session, gone, abandon_on_cancel=True
                )
            finally:
                gone.set()
            qv = await run_in_threadpool(hub.run, idx.embed_query, req.query)
            yield ev("embed", dims=int(qv.shape[0]))
            found = await run_in_threadpool(search, req, idx, qv)
            yield ev("search", **found["search"])
            yield ev("retrieve", hits=found["retrieve"])
            lm = await run_in_threadpool(hub.gen_lm)
            stream = AnswerStream(req.query, found["hits"], lm=lm, max_new_tokens=96)
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


def search_events(req: RagQuery, idx: Any, hits: list[Retrieved], qv: np.ndarray) -> dict[str, Any]:
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
