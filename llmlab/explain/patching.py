"""Causal experiments on a real model: ablate a part, or patch activations between two prompts.

Ablation asks "what does this head (or MLP) contribute here?": replace its output with zero,
or with its mean over the prompt's positions (a gentler knock-out that keeps the average
signal), and compare the next-token distribution and the loss with the normal run.

Activation patching (Meng et al. 2022's causal tracing; Heimersheim & Nanda's guide) asks
"where is the answer carried?". Run a clean prompt ("The Eiffel Tower is in ...", Paris) and
a corrupted one of the same length ("The Colosseum is in ...", Rome); then rerun the
corrupted prompt with one activation (a layer's residual stream at one position) copied from
the clean run. The share of the logit difference logit(Paris) - logit(Rome) restored,
    (LD_patched - LD_corrupt) / (LD_clean - LD_corrupt),
is 1 where that one activation carries everything the answer needs, and 0 where it carries
nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from llmlab.explain.lens import encode_prompt, eval_mode
from llmlab.explain.next_token import require_causal
from llmlab.model.hooks import Edit, Site, capture, check_site, intervene


def ablation_edit(kind: str, head: int | None, how: str) -> Edit:
    """The edit that knocks out one head (site ("head", l)) or a whole MLP/attention output:
    zero, or the mean over the positions of the same prompt."""
    if how not in ("zero", "mean"):
        raise ValueError(f"how: must be 'zero' or 'mean', got {how!r}")

    def edit(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        part = x[:, :, head] if kind == "head" else x  # (B, T, hd) or (B, T, d)
        part[...] = 0 if how == "zero" else part.mean(1, keepdim=True)
        return x

    return edit


@dataclass
class Ablation:
    tokens: list[str]
    site: Site
    head: int | None
    how: str
    loss: float | None  # mean next-token loss over the prompt (nats), normal run
    loss_ablated: float | None
    kl: float  # KL(normal || ablated) of the last position's next-token distribution
    top_ids: list[int]  # the union of both runs' top-k at the last position
    top_pieces: list[str]
    p: list[float]  # normal probabilities of top_ids
    p_ablated: list[float]


def _loss(logits: torch.Tensor, ids: torch.Tensor) -> float | None:
    if ids.shape[1] < 2:
        return None
    return float(F.cross_entropy(logits[0, :-1].float(), ids[0, 1:]))


@torch.no_grad()
def ablate(lm: Any, text: str, kind: Literal["head", "mlp", "attn"], layer: int,
           head: int | None = None, how: str = "zero", top_k: int = 8,
           limit: int | None = None) -> Ablation:
    """Run `text` normally and with one head / MLP / attention layer knocked out."""
    require_causal(lm)
    model, tok = lm.model, lm.tokenizer
    site = (kind, layer)
    check_site(model, site)
    if kind == "head":
        n_head = model.cfg.n_head
        if head is None or not 0 <= head < n_head:
            raise ValueError(f"head: must be in [0, {n_head}) to ablate a head, got {head}")
    elif kind not in ("mlp", "attn"):
        raise ValueError(f"kind: must be 'head', 'mlp' or 'attn', got {kind!r}")
    ids = torch.tensor([encode_prompt(lm, text, limit)], device=model.device)
    with eval_mode(model):
        base = model(ids).logits
        with intervene(model, {site: ablation_edit(kind, head, how)}):
            abl = model(ids).logits
    lp, lq = base[0, -1].float().log_softmax(-1), abl[0, -1].float().log_softmax(-1)
    k = min(top_k, lp.shape[-1])
    union = list(dict.fromkeys(lp.topk(k).indices.tolist() + lq.topk(k).indices.tolist()))
    union.sort(key=lambda i: -float(lp[i]))
    return Ablation(
        tokens=list(tok.pieces(ids[0].tolist())), site=site,
        head=head if kind == "head" else None, how=how,
        loss=_loss(base, ids), loss_ablated=_loss(abl, ids),
        kl=float((lp.exp() * (lp - lq)).sum()), top_ids=union, top_pieces=tok.pieces(union),
        p=lp.exp()[union].tolist(), p_ablated=lq.exp()[union].tolist(),
    )


@torch.no_grad()
def run_patched(model: Any, corrupt: torch.Tensor, source: torch.Tensor, site: Site,
                positions: list[list[int]]) -> torch.Tensor:
    """Last-position logits (B, vocab) of `corrupt` (1, T) run B times; row b has the
    activation at `site` copied from `source` (1, T, ...) at the positions `positions[b]`."""
    rows = [torch.tensor(p, dtype=torch.long) for p in positions]

    def edit(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        for b, pos in enumerate(rows):
            x[b, pos] = source[0, pos]
        return x

    batch = corrupt.expand(len(rows), -1)
    with intervene(model, {site: edit}):
        return model(batch, last_only=True).logits[:, -1].float()


@torch.no_grad()
def run_from(model: Any, layer: int, x: torch.Tensor, ids: torch.Tensor | None = None
             ) -> torch.Tensor:
    """Last-position logits (B, vocab) of the causal stack run from block `layer` on, given
    the stream `x` (B, T, d) entering it (and the tokens `ids`, (1 or B, T), where value
    embeddings read them). A sweep patching layer l reuses the corrupted run up to l instead
    of recomputing it: about half the work."""
    st = model.model
    if model.cfg.value_embeds and ids is None:
        raise ValueError("run_from: a model with value embeddings needs the token ids")
    ves = st.value_embedding(ids) if ids is not None else [None] * len(st.layers)
    positions = torch.arange(x.shape[1], device=x.device)[None]
    rope = st.rope(positions, x.dtype) if model.cfg.pos == "rope" else None
    for block, ve in zip(st.layers[layer:], ves[layer:], strict=True):
        x = block(x, None, True, rope, None, ve=ve)
    h = st.norm(x[:, -1:]) if model.cfg.final_norm else x[:, -1:]
    return model._logits(h)[:, -1].float()


@dataclass
class Patching:
    tokens: list[str]  # the corrupted prompt's pieces (the clean one's in clean_tokens)
    clean_tokens: list[str]
    kind: str
    answer: str  # the clean answer token, e.g. " Paris"
    wrong: str  # the corrupted answer token, e.g. " Rome"
    ld_clean: float  # logit(answer) - logit(wrong), last position
    ld_corrupt: float
    restored: list[list[float]]  # (layers, T): share of the logit difference restored


def single_token(lm: Any, text: str, field: str) -> int:
    ids = lm.tokenizer.encode(text)
    if len(ids) != 1:
        raise ValueError(f"{field}: {text!r} must be exactly one token, it is {len(ids)}")
    return int(ids[0])


@torch.no_grad()
def patch_sweep(lm: Any, clean: str, corrupt: str, answer: str | None = None,
                wrong: str | None = None, kind: str = "resid",
                limit: int | None = None) -> Patching:
    """Patch every (layer, position) of `kind` from the clean run into the corrupted one.

    `answer` / `wrong` default to each prompt's own top next token."""
    require_causal(lm)
    model = lm.model
    if kind not in ("resid", "attn", "mlp"):
        raise ValueError(f"kind: must be 'resid', 'attn' or 'mlp', got {kind!r}")
    c_ids = torch.tensor([encode_prompt(lm, clean, limit)], device=model.device)
    x_ids = torch.tensor([encode_prompt(lm, corrupt, limit)], device=model.device)
    t = c_ids.shape[1]
    if x_ids.shape[1] != t:
        raise ValueError(f"corrupt: {x_ids.shape[1]} tokens, but the clean prompt has {t}; "
                         "patching pairs positions one to one, so they must match")
    with eval_mode(model):
        return _sweep(lm, c_ids, x_ids, answer, wrong, kind)


def _sweep(lm: Any, c_ids: torch.Tensor, x_ids: torch.Tensor, answer: str | None,
           wrong: str | None, kind: str) -> Patching:
    model, tok = lm.model, lm.tokenizer
    t = c_ids.shape[1]
    n = len(model.model.layers) + (kind == "resid")
    sites = [(kind, i) for i in range(n)]
    store, edits = capture(model, sites)
    with intervene(model, edits):
        c_logits = model(c_ids).logits[0, -1].float()
    x_store, x_edits = capture(model, [("resid", i) for i in range(n)] if kind == "resid" else [])
    with intervene(model, x_edits):
        x_logits = model(x_ids).logits[0, -1].float()
    a = single_token(lm, answer, "answer") if answer else int(c_logits.argmax())
    w = single_token(lm, wrong, "wrong") if wrong else int(x_logits.argmax())
    if a == w:
        raise ValueError("wrong: the two prompts' answers are the same token; give `answer` "
                         "and `wrong` that differ")
    ld_c = float(c_logits[a] - c_logits[w])
    ld_x = float(x_logits[a] - x_logits[w])
    gap = ld_c - ld_x
    each = [[p] for p in range(t)]
    restored = []
    eye = torch.eye(t, dtype=torch.bool, device=model.device)[..., None]  # row p patches p
    for site in sites:
        if kind == "resid":  # the same edit as run_patched, from the corrupted stream at l
            x = torch.where(eye, store[site], x_store[site].expand(t, -1, -1))
            logits = run_from(model, site[1], x, x_ids)
        else:
            logits = run_patched(model, x_ids, store[site], site, each)
        ld = logits[:, a] - logits[:, w]
        restored.append(((ld - ld_x) / gap if gap else torch.zeros_like(ld)).tolist())
    return Patching(
        tokens=list(tok.pieces(x_ids[0].tolist())),
        clean_tokens=list(tok.pieces(c_ids[0].tolist())),
        kind=kind, answer=tok.pieces([a])[0], wrong=tok.pieces([w])[0],
        ld_clean=ld_c, ld_corrupt=ld_x, restored=restored,
    )
