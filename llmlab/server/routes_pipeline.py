"""The pipeline page: the course's stages with their pages, the runs made at each and which
run each was started from. All of it is llmlab.lab.lineage; this file only serializes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from llmlab.lab import lineage
from llmlab.server.hub import Hub


def make_router(hub: Hub) -> APIRouter:
    router = APIRouter(prefix="/api")

    @router.get("/pipeline")
    def pipeline() -> dict[str, Any]:
        m = hub.runs()
        return {**lineage.pipeline(m.list(), m.root),
                "sources": ["lineage.pipeline", "lineage.parents", "lineage.run_of"]}

    return router
