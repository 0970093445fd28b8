"""The pretraining page's plan: what the depth dial makes (shape, parameters, the lr
schedule) before a run starts. The numbers are llmlab.train.depth's; this only checks the
inputs and serializes. Runs themselves go through /api/runs; a race of the speedrun's two
recipes (llmlab.lab.race) starts and stops both through /api/pretrain/race."""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict

from llmlab.lab.options import TOKENIZERS
from llmlab.lab.race import RaceManager
from llmlab.lab.runs import RunBusy
from llmlab.server.errors import ApiError
from llmlab.server.hub import Hub
from llmlab.server.routes_runs import MIN_CORPUS_CHARS
from llmlab.train import speedrun
from llmlab.train.depth import plan
from llmlab.train.presets import PRESETS

SOURCES = ["pretrain.loss", "pretrain.fit", "pretrain.depth", "pretrain.run"]
MIN_BPE, MAX_BPE = 257, 65536  # 256 bytes + the end-of-text token; 16-bit token shards


class RaceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not a default
    # None: the pinned target (llmlab.train.speedrun.TARGET_BPB); the range is checked by
    # the library, so its message is the one the benchmark's users get too.
    target_val_bpb: float | None = None
    eval_every: int = speedrun.EVAL_EVERY
    max_steps: int | None = None  # both presets' own when None; a small one for a quick race
    seed: int = 0


def make_router(hub: Hub) -> APIRouter:
    r = APIRouter(prefix="/api/pretrain")

    @r.get("/shape")
    def shape(depth: int = Query(3, ge=1, le=48), tokenizer: str = "bpe:1024",
              steps: int | None = Query(None, ge=1, le=1_000_000),
              preset: str = "micro") -> dict[str, Any]:
        if preset not in PRESETS:
            raise ApiError(400, f"preset: expected one of {', '.join(PRESETS)}, got "
                           f"{preset!r}", "preset")
        if tokenizer.startswith("bpe:"):
            n = tokenizer[4:]
            if not n.isdigit() or not MIN_BPE <= int(n) <= MAX_BPE:
                raise ApiError(400, f"tokenizer: expected bpe:N with N in [{MIN_BPE}, "
                               f"{MAX_BPE}], got {tokenizer!r}", "tokenizer")
        elif tokenizer not in TOKENIZERS:
            raise ApiError(400, f"tokenizer: expected bpe:N or one of "
                           f"{', '.join(TOKENIZERS)}, got {tokenizer!r}", "tokenizer")
        return {**plan(preset, depth, tokenizer, steps), "sources": SOURCES,
                "corpus": {"min_chars": MIN_CORPUS_CHARS,
                           "max_chars": hub.cfg.max_corpus_chars}}

    races: list[RaceManager] = []  # made on first use, as hub.runs() makes its manager
    lock = threading.Lock()

    def race_manager() -> RaceManager:
        with lock:
            if not races:
                races.append(RaceManager(hub.runs()))
            return races[0]

    def known(race_id: str) -> str:
        try:
            race_manager().get(race_id)
        except KeyError:
            raise ApiError(404, f"race: no race {race_id!r}", "race") from None
        return race_id

    @r.get("/race")
    def race_setup() -> dict[str, Any]:
        """What a race runs: the pinned target, the evaluation interval, each recipe's
        switches and data, how the two share the machine, and the newest race."""
        m = race_manager()
        recipes = [{"role": role, "preset": p, "switches": speedrun.switches(p),
                    "data": PRESETS[p]["data"]}
                   for role, p in (("baseline", speedrun.BASELINE),
                                   ("recipe", speedrun.RECIPE))]
        return {"target_val_bpb": speedrun.TARGET_BPB, "max_target_val_bpb":
                speedrun.MAX_TARGET_BPB, "eval_every": speedrun.EVAL_EVERY,
                "order": "in turn", "threads": m.runs.threads, "recipes": recipes,
                "race": m.latest(),
                "sources": ["pretrain.race_target", "pretrain.race_presets",
                            "pretrain.race_switches", "pretrain.race"]}

    @r.post("/race", status_code=201)
    def race_start(req: RaceRequest) -> dict[str, Any]:
        target = speedrun.TARGET_BPB if req.target_val_bpb is None else req.target_val_bpb
        try:
            return race_manager().start(target, req.eval_every, req.max_steps, req.seed)
        except RunBusy as e:
            raise ApiError(409, str(e), "race", "conflict_error") from None

    @r.get("/race/{race_id}")
    def race_get(race_id: str) -> dict[str, Any]:
        return race_manager().get(known(race_id))

    @r.post("/race/{race_id}/stop")
    def race_stop(race_id: str) -> dict[str, Any]:
        return race_manager().stop(known(race_id))

    return r
