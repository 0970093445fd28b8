"""Prompt A/B: two prompts through the same model, side by side, and what differs.

Each side is exactly what the single-prompt views compute (the attention of one layer and
head, the logit lens, the next-token distribution at the last position), so the page can put
them next to each other. The difference is measured where the two prompts are comparable
whatever their lengths: at their last positions, which predict what comes next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llmlab.explain.attention import run_attention
from llmlab.explain.lens import (
    LogitLens,
    encode_prompt,
    eval_mode,
    lens_logits,
    logit_lens,
    residual_stream,
)
from llmlab.explain.next_token import require_causal


@dataclass
class PromptSide:
    text: str
    tokens: list[str]
    attention: list[list[float]]  # (T, T): the chosen layer and head, query rows
    lens: LogitLens
    next_pieces: list[str]  # top-k at the last position, best first
    next_ids: list[int]
    next_probs: list[float]


@dataclass
class Moved:
    piece: str
    id: int
    p_a: float
    p_b: float
    delta: float  # p_b - p_a


@dataclass
class PromptAB:
    a: PromptSide
    b: PromptSide
    layer: int
    head: int
    n_layers: int
    n_heads: int
    moved: list[Moved]  # the tokens whose next-token probability moved most, |delta| first
    tv: float  # total variation between the two next-token distributions
    # Per lens row (embeddings, then after each block), at the last position: the total
    # variation between A's and B's lens distributions, and whether their top tokens agree.
    lens_tv: list[float]
    lens_same_top: list[bool]


def last_position_lens(lm: Any, ids: list[int]) -> torch.Tensor:
    """(n_layer + 1, vocab): the lens distribution of every row at the last position."""
    model = lm.model
    with eval_mode(model):
        resid = residual_stream(model, torch.tensor([ids], device=model.device))[:, 0, -1]
        return lens_logits(model, resid).softmax(-1)


def _side(lm: Any, text: str, layer: int, head: int, top_k: int, limit: int | None,
          ) -> tuple[PromptSide, torch.Tensor]:
    ids = encode_prompt(lm, text, limit)
    run = run_attention(lm, text)
    lens = logit_lens(lm, text, top_k, limit)
    dists = last_position_lens(lm, ids)
    p, i = dists[-1].topk(top_k)
    side = PromptSide(
        text=text, tokens=run.tokens, attention=run.weights[layer, head].tolist(), lens=lens,
        next_pieces=list(lm.tokenizer.pieces(i.tolist())), next_ids=i.tolist(),
        next_probs=p.tolist(),
    )
    return side, dists


@torch.no_grad()
def compare_prompts(lm: Any, a: str, b: str, layer: int = 0, head: int = 0, top_k: int = 5,
                    n_moved: int = 10, limit: int | None = None) -> PromptAB:
    """Run `a` and `b` through `lm`; each side as the single-prompt views show it, plus the
    tokens whose next-token probability moved most between them and the lens rows that
    disagree at the last position."""
    require_causal(lm)
    cfg = lm.model.cfg
    if not 0 <= layer < cfg.n_layer:
        raise ValueError(f"layer: must be in [0, {cfg.n_layer}), got {layer}")
    if not 0 <= head < cfg.n_head:
        raise ValueError(f"head: must be in [0, {cfg.n_head}), got {head}")
    if not 1 <= n_moved <= 50:
        raise ValueError(f"n_moved: must be in [1, 50], got {n_moved}")
    for name, text in (("a", a), ("b", b)):
        try:
            encode_prompt(lm, text, limit)
        except ValueError as e:  # name the side, not the generic "text"
            raise ValueError(f"{name}: {str(e).removeprefix('text: ')}") from None
    side_a, da = _side(lm, a, layer, head, top_k, limit)
    side_b, db = _side(lm, b, layer, head, top_k, limit)
    diff = db[-1] - da[-1]
    idx = diff.abs().topk(n_moved).indices.tolist()
    pieces = lm.tokenizer.pieces(idx)
    moved = [Moved(pc, i, float(da[-1, i]), float(db[-1, i]), float(diff[i]))
             for pc, i in zip(pieces, idx, strict=True)]
    lens_tv = (0.5 * (db - da).abs().sum(-1)).tolist()
    same = (da.argmax(-1) == db.argmax(-1)).tolist()
    return PromptAB(a=side_a, b=side_b, layer=layer, head=head, n_layers=cfg.n_layer,
                    n_heads=cfg.n_head, moved=moved, tv=lens_tv[-1], lens_tv=lens_tv,
                    lens_same_top=same)
