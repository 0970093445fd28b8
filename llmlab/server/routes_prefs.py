"""The preferences and reward model page: one prompt's samples and the pair each pairing mode
forms (llmlab.align.prefs_view, under the hub's lock), and a reward run's Bradley-Terry
scores of one pair. The numbers are the library's; this checks requests and shapes JSON."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from llmlab.align import prefs_view
from llmlab.align.data import PAIRINGS, PREF_TASKS
from llmlab.align.reward import load_reward_lm
from llmlab.generate.chat import template_for
from llmlab.lab.rundir import model_dir
from llmlab.lru import LRU
from llmlab.server.errors import ApiError, Text
from llmlab.server.hub import Hub

SAMPLE_SOURCES = ["prefs.sample", "prefs.pair", "prefs.pick"]
SCORE_SOURCES = ["prefs.score", "reward.score", "reward.loss", "reward.baseline"]


class SampleRequest(BaseModel):
    task: str = Field("arithmetic-easy-prefs", max_length=64)
    index: int = Field(0, ge=0, le=4999)
    samples: int = Field(4, ge=2, le=8)
    temperature: float = Field(0.7, gt=0, le=2)
    seed: int = Field(0, ge=0, le=2**31)
    hint: bool = False


class ScoreRequest(BaseModel):
    model: str = Field(max_length=120)
    prompt: Text = Field(min_length=1, max_length=2000)
    chosen: Text = Field(min_length=1, max_length=2000)
    rejected: Text = Field(min_length=1, max_length=2000)


def _seq_len(run_dir: Path) -> int:
    """The run's training seq_len: pairs are cut as its batches were."""
    try:
        return int(json.loads((run_dir / "config.json").read_text())["train"]["seq_len"])
    except (OSError, ValueError, KeyError, TypeError):
        return 256


def make_router(hub: Hub) -> APIRouter:
    router = APIRouter(prefix="/api/prefs")
    # Reward models by their model directory: a newer checkpoint is a new entry.
    cache: LRU[str, tuple[Any, Any, Any, int]] = LRU(hub.cfg.max_local_models)
    load_lock = threading.Lock()

    def reward_runs() -> list[dict[str, Any]]:
        return [{"id": r["model"], "label": r["label"] or r["id"], "status": r["status"],
                 "step": r["step"], "checkpoints": r["checkpoints"]}
                for r in hub.runs().list() if r["kind"] == "reward" and r["model"]]

    def reward_model(name: str) -> tuple[Any, Any, Any, int]:
        """(reward model, tokenizer, chat template, seq_len) of `run:ID[@STEP]`."""
        run_id, _, at = name.removeprefix("run:").partition("@")
        if not name.startswith("run:") or (at and not at.isdigit()):
            raise ApiError(400, f"model: expected run:ID or run:ID@STEP of a reward run, got "
                           f"{name!r}", "model")
        try:
            run = hub.runs().get(run_id)
        except KeyError:
            raise ApiError(404, f"model: no run {run_id!r}", "model") from None
        if run["kind"] != "reward":
            raise ApiError(400, f"model: {name!r} is a {run['kind']} run, not a reward model",
                           "model")
        path = hub.runs().run_dir(run_id)
        src = model_dir(path, int(at) if at else None)  # ValueError (400) while it has none
        key = str(src.resolve())
        with load_lock:
            if (hit := cache.get(key)) is None:
                rm, lm = load_reward_lm(src)
                hit = (rm, lm.tokenizer, template_for(lm), _seq_len(path))
                cache.put(key, hit)
            return hit

    @router.get("/info")
    def info() -> dict[str, Any]:
        return {"tasks": list(PREF_TASKS), "pairings": list(PAIRINGS),
                "reward_models": reward_runs()}

    @router.post("/sample")
    def sample(req: SampleRequest) -> dict[str, Any]:
        lm = hub.lm()
        view = hub.run(prefs_view.pairing_view, lm, req.task, req.index, req.samples,
                       req.temperature, req.seed, req.hint)
        return {**view, "seed": req.seed, "sources": SAMPLE_SOURCES}

    @router.post("/score")
    def score(req: ScoreRequest) -> dict[str, Any]:
        rm, tok, template, seq_len = reward_model(req.model)
        out = hub.run(prefs_view.score_pair, rm, tok, template, req.prompt, req.chosen,
                      req.rejected, seq_len)
        return {"model": req.model, **out, "seq_len": seq_len, "sources": SCORE_SOURCES}

    return router
