"""The DPO page: one preference pair's per-token log π/π_ref and the DPO losses at any β.

The numbers are llmlab.align.explain_dpo's (the code DPO trains with); a run's policy and
reference come from llmlab.lab.policy. This file checks requests and shapes the JSON."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from llmlab.align import explain_dpo
from llmlab.align.data import PREF_TASKS, task_prefs
from llmlab.generate.chat import template_for
from llmlab.lru import LRU
from llmlab.server.errors import ApiError, Text
from llmlab.server.hub import Hub

# The bundled pairs the page shows, and the live run's preference settings: the same, so the
# run reuses the pairs the page sampled (task_prefs caches by every setting). Hinted samples at
# T 0.7, length-matched: the setting of BENCHMARKS.md's DPO run on arithmetic.
PAGE_PREFS = {"pref_samples": 4, "pref_hint": True, "pref_temperature": 0.7,
              "pref_pairing": "length-matched"}
PAGE_PAIRS = 16  # prompts sampled for the page (pairs form where the verifier's scores differ)
SOURCES = ["dpo.token_logprobs", "dpo.loss", "dpo.explain", "dpo.heldout"]


class PairRequest(BaseModel):
    model: str = Field("smollm2", max_length=200)
    prompt: Text = Field(min_length=1, max_length=2000)
    chosen: Text = Field(min_length=1, max_length=2000)
    rejected: Text = Field(min_length=1, max_length=2000)
    beta: float = Field(0.1, gt=0, le=100)


class LossRequest(BaseModel):
    logp_chosen: float = Field(le=0)
    logp_rejected: float = Field(le=0)
    ref_logp_chosen: float = Field(le=0)
    ref_logp_rejected: float = Field(le=0)
    len_chosen: int = Field(ge=1, le=100_000)
    len_rejected: int = Field(ge=1, le=100_000)
    beta: float = Field(gt=0, le=100)


def _bad(e: ValueError) -> ApiError:
    msg = str(e)  # the library's message starts with the field it is about
    return ApiError(400, msg, msg.split(":", 1)[0].split(" ")[0])


def make_router(hub: Hub) -> APIRouter:
    router = APIRouter(prefix="/api/dpo")
    policies: LRU[str, Any] = LRU(2)  # a run's policy: a copy of its base with the adapter

    def base_model(name: str) -> Any:
        if name == hub.cfg.chat_model:
            return hub.lm()
        import llmlab

        try:
            return llmlab.load(name)
        except Exception as e:  # noqa: BLE001 - any load failure is the run's model
            raise ValueError(f"model: the run's base {name!r} could not be loaded ({e})"
                             ) from None

    def policy(name: str) -> tuple[Any, Any]:
        """(π, π_ref or None for adapters-disabled) for "smollm2" or "run:ID[@STEP]"."""
        if name == "smollm2":
            m = hub.lm().model
            return m, m  # the untrained policy: π = π_ref
        if not name.startswith("run:"):
            raise ValueError(f"model: expected 'smollm2' or run:ID[@STEP], got {name!r}")
        from llmlab.lab.policy import policy_and_reference

        run_id, _, at = name[4:].partition("@")
        if at and not at.isdigit():
            raise ValueError(f"model: {name!r}: expected run:ID@STEP with a step number")
        try:
            path = hub.runs().run_dir(run_id)
        except KeyError:
            raise ValueError(f"model: no playground run {run_id!r}") from None
        key = f"{path}@{at}"
        if key not in policies:
            policies.put(key, policy_and_reference(path, int(at) if at else None, base_model))
        return policies.get(key)

    @router.get("/pairs")
    def pairs(task: str = "arithmetic-easy-prefs") -> dict[str, Any]:
        if task not in PREF_TASKS:
            raise ApiError(400, f"task: expected one of {', '.join(PREF_TASKS)}, got {task!r}",
                           "task")
        lm = hub.lm()
        # Sampled by SmolLM2 the first time (under the model lock), then read from the cache.
        rows = hub.run(task_prefs, lm, task, PAGE_PAIRS, None, 0, PAGE_PREFS["pref_samples"],
                       PAGE_PREFS["pref_hint"], PAGE_PREFS["pref_temperature"],
                       PAGE_PREFS["pref_pairing"])
        return {"task": task, "tasks": list(PREF_TASKS), "prompts": PAGE_PAIRS,
                "settings": PAGE_PREFS,
                "pairs": [{k: r.get(k) for k in ("prompt", "chosen", "rejected",
                                                 "chosen_reward", "rejected_reward")}
                          for r in rows]}

    @router.post("/pair")
    def pair(req: PairRequest) -> dict[str, Any]:
        try:
            pol, ref = policy(req.model)
            lm = hub.lm()
            view = hub.run(explain_dpo.explain_pair, pol, None if ref is None else ref,
                           lm.tokenizer, template_for(lm), req.prompt, req.chosen,
                           req.rejected, req.beta)
        except ValueError as e:
            raise _bad(e) from None
        return {"model": req.model, "same_model": ref is pol, **view, "sources": SOURCES}

    @router.post("/loss")
    def loss(req: LossRequest) -> dict[str, Any]:
        try:
            out = explain_dpo.dpo_losses(req.logp_chosen, req.logp_rejected,
                                         req.ref_logp_chosen, req.ref_logp_rejected,
                                         req.len_chosen, req.len_rejected, req.beta)
        except ValueError as e:
            raise _bad(e) from None
        return {**out, "sources": SOURCES}

    return router
