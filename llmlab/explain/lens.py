"""The logit lens (nostalgebraist, 2020): what would the model predict if it stopped here?

The residual stream entering each block is passed through the model's own final norm and LM
head, as if the remaining blocks were skipped. Row 0 reads the embeddings, row n_layer the
last block's output: that row is the model's real prediction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from llmlab.explain.next_token import require_causal
from llmlab.model.hooks import capture, intervene


@dataclass
class LogitLens:
    tokens: list[str]  # the prompt's pieces, one per position
    ids: list[int]
    top_ids: list[list[list[int]]]  # (n_layer + 1, T, k): best first
    top_pieces: list[list[list[str]]]
    top_probs: list[list[list[float]]]
    # p(the model's final top token) at each layer and position: when the answer "appears"
    final_prob: list[list[float]]
    final_rank: list[list[int]]  # its rank there (0 = top)


def encode_prompt(lm: Any, text: str, limit: int | None = None) -> list[int]:
    ids = list(lm.tokenizer.encode(text))
    if not ids:
        raise ValueError("text: it tokenizes to zero tokens")
    cap = min(limit or lm.model.cfg.max_seq_len, lm.model.cfg.max_seq_len)
    if len(ids) > cap:
        raise ValueError(f"text: {len(ids)} tokens; at most {cap} here")
    return ids


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Dropout off for the duration (the numbers must be deterministic), then as it was."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def residual_stream(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """(n_layer + 1, B, T, d): the stream entering each block, then the last block's output."""
    sites = [("resid", i) for i in range(len(model.model.layers) + 1)]
    store, edits = capture(model, sites)
    with intervene(model, edits):
        model(ids)
    return torch.stack([store[s] for s in sites])


def lens_logits(model: Any, resid: torch.Tensor) -> torch.Tensor:
    """The final norm and the LM head applied to any residual stream state(s)."""
    h = model.model.norm(resid) if model.cfg.final_norm else resid
    return model.lm_head(h).float()


@torch.no_grad()
def logit_lens(lm: Any, text: str, top_k: int = 5, limit: int | None = None) -> LogitLens:
    """Top-k tokens, with probabilities, at every layer (rows) and position (columns)."""
    require_causal(lm)
    if not 1 <= top_k <= 50:
        raise ValueError(f"top_k: must be in [1, 50], got {top_k}")
    model, tok = lm.model, lm.tokenizer
    ids = encode_prompt(lm, text, limit)
    x = torch.tensor([ids], device=model.device)
    with eval_mode(model):
        resid = residual_stream(model, x)[:, 0]  # (L + 1, T, d)
        n, t = resid.shape[:2]
        final = lens_logits(model, resid[-1]).argmax(-1)  # the model's own prediction
        rows, finals = resid.flatten(0, 1), final.repeat(n)  # row i: layer i // T, pos i % T
        tops, probs_f, ranks = [], [], []
        # Many rows per LM-head matmul (its 49k x d weight is read once per chunk, not per
        # layer), but never all (L + 1) x T x vocab probabilities at once.
        for r, f in zip(rows.split(256), finals.split(256), strict=True):
            probs = lens_logits(model, r).softmax(-1)
            tops.append(probs.topk(top_k, dim=-1))
            p = probs.gather(-1, f[:, None])
            probs_f.append(p[:, 0])
            ranks.append((probs > p).sum(-1))
    top_p = torch.cat([v.values for v in tops]).view(n, t, top_k)
    ti = torch.cat([v.indices for v in tops]).view(n, t, top_k).tolist()
    final_p, rank = torch.cat(probs_f).view(n, t), torch.cat(ranks).view(n, t)
    return LogitLens(
        tokens=list(tok.pieces(ids)), ids=ids, top_ids=ti,
        top_pieces=[[tok.pieces(row) for row in layer] for layer in ti],
        top_probs=top_p.tolist(), final_prob=final_p.tolist(), final_rank=rank.tolist(),
    )
