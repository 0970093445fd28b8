"""What each attention head does, measured: the standard diagnostics as layers x heads maps.

The test sequence is Olsson et al. (2022)'s: n random tokens, then the same n again. In the
second copy, at position n + j (the token r_j seen before at j):
    previous-token    weight on the position just before, i - 1 (every position i >= 1)
    duplicate-token   weight on the earlier occurrence of the same token, j
    induction         (prefix matching) weight on the token that followed it last time,
                      j + 1: the head looks up "what came after me before?"
    sink              weight on the first token (queries i >= 1), the model's parking spot
Random tokens carry no meaning, so only a mechanism that copies from context can predict
the second half. Olsson's copying score reads the weights instead: the OV circuit
W_U W_O W_V W_E maps a token attended to onto the logits; sum(eigenvalues) / sum(|eigenvalues|)
is near 1 for a head that raises the logit of the token it attends to (a copier).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmlab.explain.lens import eval_mode
from llmlab.model.record import record_attention

ROLES = ("previous", "duplicate", "induction", "sink")


@dataclass
class HeadRoles:
    ids: list[int]  # the test sequence: n random tokens, twice
    tokens: list[str]
    n: int
    scores: dict[str, list[list[float]]]  # role -> (n_layer, n_head), each in [0, 1]
    # (n_layer, n_head) in [-1, 1]; None without an LM head or plain weight matrices
    copying: list[list[float]] | None
    top: dict[str, list[tuple[int, int, float]]]  # role -> [(layer, head, score)], best first


def repeated_random_tokens(vocab_size: int, n: int, seed: int,
                           avoid: set[int] | None = None) -> list[int]:
    """n distinct random ids (none in `avoid`, e.g. special tokens), then the same n again:
    distinct, so each token's earlier occurrence is unambiguous."""
    pool = torch.tensor(sorted(set(range(vocab_size)) - (avoid or set())))
    if len(pool) < n:
        raise ValueError(f"n: at most {len(pool)} distinct tokens in this vocabulary, got {n}")
    g = torch.Generator().manual_seed(seed)
    r = pool[torch.randperm(len(pool), generator=g)[:n]].tolist()
    return r + r


@torch.no_grad()
def attention_weights(model: Any, ids: list[int]) -> torch.Tensor:
    """(L, H, T, T) attention weights of one recorded forward pass, the model's own mask."""
    x = torch.tensor([ids], device=model.device)
    with record_attention(model) as rec:
        if model.cfg.lm_head:
            model(x)
        else:  # an encoder
            model.encode(x, torch.ones_like(x))
    return torch.stack([m["weights"][0].float() for m in rec.attentions])


def role_scores(weights: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """(L, H) scores from the weights (L, H, 2n, 2n) of a sequence of n tokens repeated."""
    t = weights.shape[-1]
    if t != 2 * n:
        raise ValueError(f"weights: expected {2 * n} positions (n={n} twice), got {t}")
    i = torch.arange(1, t)
    j = torch.arange(n - 1)  # second-copy queries n + j that have a next token j + 1
    return {
        "previous": weights[..., i, i - 1].mean(-1),
        "duplicate": weights[..., n + j, j].mean(-1),
        "induction": weights[..., n + j, j + 1].mean(-1),
        "sink": weights[..., i, 0].mean(-1),
    }


def _gain(norm: Any, d: int) -> torch.Tensor:
    w = getattr(norm, "weight", None)
    return torch.ones(d) if w is None else w.detach().float().cpu()


@torch.no_grad()
def copying_scores(model: Any) -> torch.Tensor | None:
    """(L, H): sum(lambda) / sum(|lambda|) over the eigenvalues of each head's OV circuit.

    The full circuit U diag(g_f) O_h V_h diag(g_l) E^T is vocab x vocab; it has the same
    non-zero eigenvalues as V_h diag(g_l) (E^T U) diag(g_f) O_h, which is head_dim square
    (eig(AB) = eig(BA)). g_l and g_f are the gains of the layer's input norm and the final
    norm (pre-norm models; the per-token 1/rms scale is a positive scalar and drops out)."""
    cfg = model.cfg
    blocks = model.model.layers
    mods = [getattr(model, "lm_head", None)] + [getattr(b.self_attn, n, None)
                                                for b in blocks for n in ("v_proj", "o_proj")]
    # A wrapped projection (an unmerged adapter, quantised weights) has no one plain matrix.
    if not cfg.lm_head or not all(isinstance(m, nn.Linear) for m in mods):
        return None
    d, hd = cfg.d_model, cfg.head_dim
    emb = model.model.embed_tokens.weight.detach().float().cpu()
    unemb = model.lm_head.weight.detach().float().cpu()
    g_f = _gain(model.model.norm, d) if cfg.final_norm and cfg.prenorm else torch.ones(d)
    eu = emb.T @ (unemb * g_f)  # (d, d): E^T U diag(g_f)
    rows = []
    for block in blocks:
        attn = block.self_attn
        g_l = _gain(block.input_layernorm, d) if cfg.prenorm else torch.ones(d)
        wv = attn.v_proj.weight.detach().float().cpu() * g_l  # (kv * hd, d)
        wo = attn.o_proj.weight.detach().float().cpu()  # (d, H * hd)
        rep = attn.n_head // attn.n_kv_head
        row = []
        for h in range(attn.n_head):
            kv = h // rep
            m = wv[kv * hd:(kv + 1) * hd] @ eu @ wo[:, h * hd:(h + 1) * hd]
            lam = torch.linalg.eigvals(m.double())
            total = lam.abs().sum()
            row.append(float(lam.real.sum() / total) if total > 0 else 0.0)
        rows.append(row)
    return torch.tensor(rows)


def ranked(scores: torch.Tensor, k: int = 5) -> list[tuple[int, int, float]]:
    """The k highest-scoring heads as (layer, head, score), best first."""
    vals, idx = scores.flatten().topk(min(k, scores.numel()))
    h = scores.shape[1]
    return [(int(i) // h, int(i) % h, float(v)) for v, i in zip(vals, idx, strict=True)]


def head_roles(lm: Any, n: int = 24, seed: int = 0) -> HeadRoles:
    """Score every head of `lm` on the repeated random-token sequence (2n tokens)."""
    model, tok = lm.model, lm.tokenizer
    if not 2 <= n <= model.cfg.max_seq_len // 2:
        raise ValueError(f"n: must be in [2, {model.cfg.max_seq_len // 2}], got {n}")
    avoid = set(getattr(tok, "special_tokens", {}).values())
    ids = repeated_random_tokens(model.cfg.vocab_size, n, seed, avoid)
    with eval_mode(model):
        scores = role_scores(attention_weights(model, ids), n)
        copying = copying_scores(model)
    top = {k: ranked(v) for k, v in scores.items()}
    if copying is not None:
        top["copying"] = ranked(copying)
    return HeadRoles(
        ids=ids, tokens=list(tok.pieces(ids)), n=n,
        scores={k: v.tolist() for k, v in scores.items()},
        copying=None if copying is None else copying.tolist(), top=top,
    )
