"""The word-vector page: word2vec trained here, and SmolLM2's input embedding table.

All maths is `llmlab.foundations` (word2vec, TokenSpace, VectorSpace); this file trains the
page's word2vec once in the background, checks words and shapes the JSON."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from llmlab.foundations import TokenSpace, W2VConfig, word2vec
from llmlab.server.errors import ApiError
from llmlab.server.hub import Hub
from llmlab.server.routes_foundations import clean, sse_event

Space = Literal["word2vec", "smollm2"]
Word = Annotated[str, Field(min_length=1, max_length=40)]


class VectorRequest(BaseModel):
    """What every word-vector page asks first: which space to look in."""

    space: Space = "word2vec"


class NeighboursRequest(VectorRequest):
    word: Word
    k: int = Field(10, ge=1, le=50)


class AnalogyRequest(VectorRequest):
    a: Word
    b: Word
    c: Word
    k: int = Field(5, ge=1, le=50)


class ProjectionRequest(VectorRequest):
    words: list[Word] = Field(min_length=2, max_length=60)


W2V_CONFIG: Any = None  # the page's word2vec settings; None = W2VConfig() defaults


def _w2v_config() -> W2VConfig:
    return W2V_CONFIG or W2VConfig()


class W2VTrainer:
    """The page's word2vec vectors: from the cache, or trained once in a background thread
    while pages poll the progress."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wv: Any = None
        self.thread: threading.Thread | None = None
        self.progress, self.loss, self.error = 0.0, float("nan"), ""

    def start(self) -> None:
        with self.lock:
            if self.wv is not None or (self.thread and self.thread.is_alive()):
                return
            cfg = _w2v_config()
            if word2vec.cached(cfg):
                self.wv = word2vec.load_or_train(cfg)
                return
            self.error = ""

            def run() -> None:
                try:
                    wv = word2vec.load_or_train(cfg, progress=False, on_progress=self._tick)
                    with self.lock:
                        self.wv = wv
                except Exception as e:  # reported to the page, which shows it
                    self.error = f"word2vec training failed: {e}"

            self.thread = threading.Thread(target=run, daemon=True, name="word2vec")
            self.thread.start()

    def _tick(self, frac: float, loss: float) -> None:
        self.progress, self.loss = frac, loss

    def status(self) -> dict[str, Any]:
        dead = self.thread is not None and not self.thread.is_alive()
        wv = self.wv  # read after the liveness check: a finished thread has set it by then
        if wv is None and dead and not self.error:
            self.error = "word2vec training stopped without vectors"
        out: dict[str, Any] = {
            "ready": wv is not None, "progress": 1.0 if wv is not None else self.progress,
            "loss": clean(self.loss), "error": self.error or None,
            "config": asdict(wv.cfg if wv is not None else _w2v_config()),
        }
        if wv is not None:
            out.update(vocab=len(wv.words), tokens=int(wv.counts.sum()),
                       losses=clean(wv.losses),
                       loss=clean(wv.losses[-1]) if wv.losses else None)
        return out


def make_router(hub: Hub) -> APIRouter:
    router = APIRouter(prefix="/api/foundations")
    w2v = W2VTrainer()
    tok_lock = threading.Lock()

    @functools.cache  # SmolLM2's table, normalised once
    def token_space() -> TokenSpace:
        return TokenSpace(hub.lm())

    @router.get("/word2vec/status")
    def w2v_status() -> dict[str, Any]:
        return w2v.status()

    @router.post("/word2vec/train")
    def w2v_train() -> StreamingResponse:
        w2v.start()

        def events() -> Iterator[str]:
            while True:
                st = w2v.status()
                if st["ready"] or st["error"]:
                    yield sse_event("done", st)
                    return
                yield sse_event("progress", {"progress": st["progress"], "loss": st["loss"]})
                time.sleep(0.5)

        return StreamingResponse(events(), media_type="text/event-stream")

    def space(name: str) -> Any:
        if name == "word2vec":
            if w2v.wv is None:
                w2v.start()
                if w2v.wv is None:
                    raise ApiError(409, f"space: word2vec is still training "
                                   f"({100 * w2v.progress:.0f}% done)", "space")
            return w2v.wv
        with tok_lock:  # built once, not by every first request at the same time
            return token_space()

    def check(sp: Any, word: str, field: str) -> None:
        try:
            sp.vector(word)
        except ValueError as e:
            raise ApiError(400, f"{field}: {e}", field) from None

    def token(sp: Any, word: str) -> str | None:
        return sp.describe(word)["token"] if hasattr(sp, "describe") else None

    @router.post("/vectors/neighbours")
    def neighbours(req: NeighboursRequest) -> dict[str, Any]:
        sp = space(req.space)
        check(sp, req.word, "word")
        return {"space": req.space, "word": req.word, "token": token(sp, req.word),
                "vocab": len(sp), "neighbours": [{"word": w, "cos": c}
                                                 for w, c in sp.neighbours(req.word, req.k)],
                "sources": ["foundations.neighbours", "foundations.token"]}

    @router.post("/vectors/analogy")
    def analogy(req: AnalogyRequest) -> dict[str, Any]:
        sp = space(req.space)
        for f in ("a", "b", "c"):
            check(sp, getattr(req, f), f)
        res = sp.analogy(req.a, req.b, req.c, req.k)
        return {"space": req.space, "expression": f"{req.b} - {req.a} + {req.c}",
                "tokens": [token(sp, w) for w in (req.a, req.b, req.c)],
                "results": [{"word": w, "cos": c} for w, c in res],
                "sources": ["foundations.analogy", "foundations.sgns"]}

    @router.post("/vectors/projection")
    def projection(req: ProjectionRequest) -> dict[str, Any]:
        sp = space(req.space)
        for i, w in enumerate(req.words):
            check(sp, w, f"words.{i}")
        out = sp.project(req.words)
        return {"space": req.space, **clean(out),
                "sources": ["foundations.project", "rag.projection"]}

    return router
