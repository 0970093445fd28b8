"""/v1/responses (placeholder; filled in below)."""
from __future__ import annotations

from fastapi import APIRouter

from llmlab.server.hub import Hub


def make_router(hub: Hub) -> APIRouter:
    return APIRouter()
