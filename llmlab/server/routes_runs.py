"""Training runs started from the playground (llmlab.lab): start, list, follow (SSE), stop,
resume, and upload a pretraining corpus. The worker runs the CLI; this only relays."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from llmlab.lab.rundir import Follower
from llmlab.lab.runs import RunBusy, RunManager
from llmlab.server.errors import ApiError, Text
from llmlab.server.hub import Hub, self_url
from llmlab.server.routes_foundations import sse_event

POLL_S, PING_S = 0.4, 15.0
MIN_CORPUS_CHARS = 20_000  # a validation split of at least one eval batch, and a BPE


class StartRequest(BaseModel):
    kind: Literal["pretrain", "sft", "reward", "dpo", "ppo", "grpo", "eval", "judge"]
    options: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    label: str = Field("", max_length=80)


class CorpusRequest(BaseModel):
    text: Text = Field(min_length=1)


def make_router(hub: Hub) -> APIRouter:
    r = APIRouter(prefix="/api/runs")

    def runs() -> RunManager:
        return hub.runs()

    def known(run_id: str) -> str:
        try:
            runs().get(run_id)
        except KeyError:
            raise ApiError(404, f"run: no run {run_id!r}", "run") from None
        return run_id

    @r.get("")
    def list_runs() -> dict[str, Any]:
        m = runs()
        return {"runs": m.list(), "running": m.running(), "max_runs": m.max_runs,
                "threads": m.threads, "root": str(m.root)}

    @r.post("", status_code=201)
    def start(req: StartRequest, request: Request) -> dict[str, Any]:
        m = runs()
        server = request.scope.get("server")
        if m.self_url is None and server and server[1]:  # served without telling its URL
            hub.self_url = m.self_url = self_url(str(server[0]), int(server[1]))
        try:
            run = m.start(req.kind, dict(req.options), req.label)
            o = req.options
            if req.kind == "judge" and not (o.get("judge") or o.get("judge_base_url")):
                hub.warm(str(o.get("judge_model") or ""))  # loads while the answers are made
            return run
        except RunBusy as e:
            raise ApiError(409, str(e), "kind", "conflict_error") from None

    @r.get("/{run_id}")
    def get(run_id: str) -> dict[str, Any]:
        return runs().get(known(run_id))

    @r.post("/{run_id}/stop")
    def stop(run_id: str) -> dict[str, Any]:
        return runs().stop(known(run_id))

    @r.post("/{run_id}/resume")
    def resume(run_id: str) -> dict[str, Any]:
        try:
            return runs().resume(known(run_id))
        except RunBusy as e:
            raise ApiError(409, str(e), "run", "conflict_error") from None

    @r.get("/{run_id}/events")
    async def events(run_id: str) -> StreamingResponse:
        """The run's history, then its new records as they are written, until it ends. On
        the event loop (a poll reads a few small files), so open pages hold no threads."""
        m = runs()
        follower = Follower(m.run_dir(known(run_id)), lambda: m.get(run_id))

        async def stream() -> AsyncIterator[str]:
            quiet = 0.0
            while not follower.done:
                out = follower.poll()
                for event, data in out:
                    yield sse_event(event, data)
                quiet = 0.0 if out else quiet + POLL_S
                if quiet >= PING_S:  # a comment line: proxies keep the stream, dead clients show
                    yield ": ping\n\n"
                    quiet = 0.0
                if not follower.done:
                    await asyncio.sleep(POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @r.post("/corpus", status_code=201)
    def corpus(req: CorpusRequest) -> dict[str, Any]:
        limit = hub.cfg.max_corpus_chars
        if len(req.text) > limit:
            raise ApiError(400, f"text: {len(req.text):,} characters; an uploaded corpus "
                           f"may have at most {limit:,}", "text")
        if len(req.text) < MIN_CORPUS_CHARS:
            raise ApiError(400, f"text: {len(req.text):,} characters; at least "
                           f"{MIN_CORPUS_CHARS:,} characters are needed to hold out a "
                           "validation split and train a tokenizer", "text")
        return runs().save_corpus(req.text)

    return r
