"""The training lab's endpoints (issue #21): next-token prediction scores."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from llmlab.explain.next_token import NextTokenScores, require_causal, score_text
from llmlab.server.errors import ApiError, Text
from llmlab.server.hub import Hub


class NextTokenRequest(BaseModel):
    text: Text = Field(min_length=1)
    # One model, or two to compare on the same text (e.g. SmolLM2 against a run:ID@STEP).
    models: list[str] = Field(default_factory=lambda: ["smollm2"], min_length=1, max_length=2)
    top_k: int = Field(5, ge=1, le=20)


def scores_json(name: str, model_name: str, s: NextTokenScores) -> dict[str, Any]:
    """The library's scores as the page draws them: one entry per token, the first (context
    only, nothing predicts it) with null p, nll and guesses."""
    first = {"piece": s.first_piece, "id": s.first_id, "p": None, "nll": None, "top": []}
    rest = [
        {"piece": t.piece, "id": t.id, "p": t.p, "nll": t.surprisal,
         "top": [{"piece": pc, "id": i, "p": p}
                 for pc, i, p in zip(t.top_pieces, t.top_ids, t.top_probs, strict=True)]}
        for t in s.tokens
    ]
    return {
        "model": name,
        "model_name": model_name,
        "tokens": [first, *rest],
        "mean_nll": s.mean_nll,
        "perplexity": s.perplexity,
        "bits_per_byte": s.bits_per_byte,
        "n_tokens": s.n_tokens,
        "n_scored": len(s.tokens),
        "n_bytes": s.n_bytes,
    }


def make_router(hub: Hub) -> APIRouter:
    r = APIRouter(prefix="/api")

    def causal_model(name: str) -> Any:
        """The hub's model for `name`, refused (naming `models`) unless it is a causal LM."""
        try:
            lm = hub.attention_model(name)
            require_causal(lm)
        except ValueError as e:
            raise ApiError(400, f"models: {e}", "models") from e
        except PermissionError as e:  # a directory path, on a server that reads none
            raise ApiError(403, f"models: {e}", "models", "permission_error") from e
        return lm

    @r.post("/next_token")
    def next_token(req: NextTokenRequest) -> dict[str, Any]:
        if len(req.text) > hub.cfg.max_text_chars:
            raise ApiError(400, f"text: at most {hub.cfg.max_text_chars} characters", "text")
        lms = [causal_model(name) for name in req.models]  # all checked before any forward
        rows = []
        for name, lm in zip(req.models, lms, strict=True):
            try:
                s = hub.run(score_text, lm, req.text, req.top_k)
            except ValueError as e:  # too long for this model's context, or under 2 tokens
                raise ApiError(400, f"{e} (model {name})", "text") from e
            rows.append(scores_json(name, lm.name, s))
        return {
            "text": req.text,
            "top_k": req.top_k,
            "rows": rows,
            "sources": ["next_token.score", "next_token.causal", "tokenizer.encode"],
        }

    return r
