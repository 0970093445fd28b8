"""RAG page routes: a thin adapter over `llmlab.rag`.

The retrieval engine lives in `llmlab.rag` (another branch). This module only maps HTTP to
it; when it is not importable every route answers 503 "RAG engine not installed".
Expected engine API (duck-typed, checked at import):
    llmlab.rag.playground.Playground(embedder, generator_lm)  with
      .build(documents: list[tuple[name, text]], chunk_size: int) -> kb_stats dict
      .search(query, k, method: "dense"|"bm25"|"hybrid", rerank: bool) -> list[dict]
      .answer(query, hits) -> Iterator[str]   (grounded, [n] citations)
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from llmlab.server.errors import ApiError
from llmlab.server.hub import Hub

EXAMPLES = [
    "How do I read a file line by line?",
    "What does the with statement do?",
    "How do list comprehensions work?",
]
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
ALLOWED_EXT = (".txt", ".md", ".rst", ".html")


def engine() -> Any:
    try:
        from llmlab.rag import playground  # type: ignore[attr-defined]
    except ImportError:
        return None
    return playground


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


def make_router(hub: Hub) -> APIRouter:
    router = APIRouter(prefix="/api/rag")
    sessions: dict[str, list[tuple[str, str]]] = {}
    lock = threading.Lock()

    def need() -> Any:
        eng = engine()
        if eng is None:
            raise ApiError(
                503, "RAG engine not installed (llmlab.rag is missing)", None, "service_unavailable"
            )
        return eng

    @router.get("/info")
    def info() -> dict[str, Any]:
        return {
            "available": engine() is not None,
            "examples": EXAMPLES,
            "methods": ["dense", "bm25", "hybrid"],
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
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ApiError(400, "file: not UTF-8 text", "file") from e
        sid = session if session and re.fullmatch(r"[a-f0-9]{32}", session) else uuid.uuid4().hex
        with lock:
            docs = sessions.setdefault(sid, [])
            if len(docs) >= hub.cfg.max_session_docs:
                raise ApiError(400, f"file: at most {hub.cfg.max_session_docs} per session", "file")
            docs.append((name, text))
            while len(sessions) > 64:  # bound memory: forget the oldest sessions
                sessions.pop(next(iter(sessions)))
        return {"session": sid, "name": name, "bytes": len(data), "docs": len(docs)}

    @router.post("/query")
    def query(req: RagQuery) -> StreamingResponse:
        eng = need()
        extra = sessions.get(req.session or "", [])

        def events() -> Iterator[str]:
            def ev(stage: str, **data: Any) -> str:
                return f"event: {stage}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

            pg = hub.run(eng.get_playground, hub, req.chunk_size, tuple(extra))
            yield ev("query", query=req.query)
            result = hub.run(pg.search, req.query, req.k, req.method, req.rerank)
            yield ev("embed", dims=result.get("dims"))
            yield ev("search", **{k: v for k, v in result.items() if k != "hits"})
            yield ev("retrieve", hits=result["hits"])
            for piece in hub.locked_iter(pg.answer(req.query, result["hits"])):
                yield ev("token", text=piece)
            yield ev("done")

        return StreamingResponse(events(), media_type="text/event-stream")

    return router
