"""The RL page (GRPO and PPO on one prompt): a sampled group with verifiable rewards and
advantages, one real GRPO update, PPO's values, KL penalty and GAE.

All numbers come from llmlab.align.rl_view (the training code); this file checks requests,
takes the model lock for forward passes (the sandbox runs outside it, so a hostile completion
that loops until its timeout holds up no other page) and shapes the JSON."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from llmlab.align import rl_view
from llmlab.align.config import GRPOConfig, PPOConfig
from llmlab.server.errors import ApiError, Text
from llmlab.server.hub import Hub

MAX_G, MAX_NEW, MAX_IDS = 8, 96, 160
Task = Literal["arithmetic", "arithmetic-easy", "trivia", "humaneval"]


class Completion(BaseModel):
    text: Text = Field(max_length=4000)
    ids: list[int] | None = Field(None, max_length=MAX_IDS)  # as sampled; else the text's


class Prompt(BaseModel):
    task: Task = "arithmetic-easy"
    index: int = Field(0, ge=0, lt=rl_view.MAX_INDEX)
    reward: Literal["verifier", "format", "verifier+format"] = "verifier"
    model: str = Field("smollm2", max_length=200)  # smollm2 or run:ID
    temperature: float = Field(0.8, gt=0, le=2.0)
    max_new_tokens: int = Field(48, ge=1, le=MAX_NEW)


class GroupRequest(Prompt):
    n: int = Field(6, ge=2, le=MAX_G)
    seed: int = Field(0, ge=0, le=2**31)
    completions: list[Completion] | None = Field(None, min_length=2, max_length=MAX_G)


class Scored(Prompt):
    completions: list[Completion] = Field(min_length=2, max_length=MAX_G)
    rewards: list[float] = Field(min_length=2, max_length=MAX_G)
    lr: float = Field(5e-4, gt=0, le=0.05)
    seed: int = Field(0, ge=0, le=2**31)


class StepRequest(Scored):
    scale_rewards: Literal["group", "batch", "none"] = "group"
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    importance_sampling_level: Literal["token", "sequence"] = "token"
    epsilon: float = Field(0.2, gt=0, lt=1)
    epsilon_high: float = Field(0.28, ge=0, le=10)
    beta: float = Field(0.0, ge=0, le=10)


class PPORequest(Scored):
    kl_coef: float = Field(0.05, ge=0, le=10)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    cliprange: float = Field(0.2, gt=0, lt=1)
    vf_coef: float = Field(0.1, ge=0, le=10)
    ppo_epochs: int = Field(2, ge=1, le=4)


def _bad(e: ValueError) -> ApiError:
    msg = str(e)  # the library's message starts with the field it is about
    return ApiError(400, msg, msg.split(":", 1)[0].split(" ", 1)[0])


def make_router(hub: Hub) -> APIRouter:
    router = APIRouter(prefix="/api")

    def model(name: str) -> Any:
        if name == "minilm":
            raise ApiError(400, "model: minilm is an encoder; RL needs a causal LM", "model")
        try:  # smollm2, run:ID[@STEP], local:NAME (the attention page's names)
            return hub.attention_model(name)
        except ValueError as e:  # (a PermissionError is the app's 403)
            raise ApiError(400, str(e), "model") from None

    def row_of(req: Prompt) -> dict[str, Any]:
        try:
            return rl_view.prompt_row(req.task, req.index, req.reward)
        except ValueError as e:
            raise _bad(e) from None

    def ids_of(lm: Any, row: dict[str, Any], comps: list[Completion]) -> list[list[int]]:
        return [c.ids if c.ids else rl_view.typed_ids(lm, row, c.text)[:MAX_IDS] for c in comps]

    @router.post("/rl/group")
    def rl_group(req: GroupRequest) -> dict[str, Any]:
        row, lm = row_of(req), model(req.model)
        if req.completions:
            texts = [c.text for c in req.completions]
            ids = hub.run(ids_of, lm, row, req.completions)
        else:
            got = hub.run(rl_view.sample_group, lm, row, req.n, req.max_new_tokens,
                          req.temperature, req.seed)
            texts, ids = [g["text"] for g in got], [g["ids"] for g in got]
        verdicts = rl_view.score_group(texts, row)  # the sandbox, outside the model lock
        rewards = [v["reward"] for v in verdicts]
        return {"prompt": row["prompt"], "chat": row.get("chat", True),
                "verifier": row["verifier"],
                "completions": [{"text": t, "ids": i, **v}
                                for t, i, v in zip(texts, ids, verdicts, strict=True)],
                "rewards": rewards,
                "advantages": {s: rl_view.advantages(rewards, len(rewards), s)
                               for s in ("group", "batch", "none")},
                "sources": ["rl.sample", "rl.verdicts", "grpo.advantages"]}

    def checked(req: Scored) -> tuple[Any, dict[str, Any], list[list[int]]]:
        if len(req.rewards) != len(req.completions):
            raise ApiError(400, f"rewards: expected {len(req.completions)} (one per "
                           f"completion), got {len(req.rewards)}", "rewards")
        row, lm = row_of(req), model(req.model)
        return lm, row, hub.run(ids_of, lm, row, req.completions)

    @router.post("/rl/grpo_step")
    def rl_grpo_step(req: StepRequest) -> dict[str, Any]:
        lm, row, ids = checked(req)
        cfg = GRPOConfig(num_generations=len(ids), max_new_tokens=req.max_new_tokens,
                         temperature=req.temperature, scale_rewards=req.scale_rewards,
                         loss_type=req.loss_type, epsilon=req.epsilon,
                         epsilon_high=req.epsilon_high, beta=req.beta,
                         importance_sampling_level=req.importance_sampling_level)
        try:
            out = hub.run(rl_view.grpo_step, lm, row, ids, req.rewards, cfg, req.lr, req.seed)
        except ValueError as e:
            raise _bad(e) from None
        return {**out, "sources": ["grpo.loss", "grpo.ratio", "grpo.weights", "rl.grpo_step"]}

    @router.post("/rl/ppo")
    def rl_ppo(req: PPORequest) -> dict[str, Any]:
        lm, row, ids = checked(req)
        cfg = PPOConfig(max_new_tokens=req.max_new_tokens, temperature=req.temperature,
                        kl_coef=req.kl_coef, gamma=req.gamma, lam=req.lam,
                        cliprange=req.cliprange, vf_coef=req.vf_coef, ppo_epochs=req.ppo_epochs)
        try:
            out = hub.run(rl_view.ppo_view, lm, row, ids, req.rewards, cfg, req.lr, req.seed)
        except ValueError as e:
            raise _bad(e) from None
        return {**out, "sources": ["ppo.rewards", "ppo.gae", "ppo.loss"]}

    return router
