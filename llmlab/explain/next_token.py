"""How surprised a language model is by each token of a text (issue #21).

For every token after the first: the log-probability the model gave it, its surprisal, and
the model's top-k guesses at that position; for the whole text: mean cross-entropy,
perplexity and bits per byte. Results are plain Python values, ready to be JSON-ed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class TokenScore:
    id: int
    piece: str  # the token's text; bytes that are not whole UTF-8 show as \xNN
    logprob: float  # natural log of p(token | the tokens before it)
    p: float  # exp(logprob): the probability the model gave this token
    surprisal: float  # -logprob, in nats
    top_ids: list[int]  # the model's k most likely tokens at this position, best first
    top_pieces: list[str]
    top_probs: list[float]


@dataclass
class NextTokenScores:
    first_id: int  # the first token is context only: nothing predicts it
    first_piece: str
    tokens: list[TokenScore]  # one per token after the first
    n_tokens: int  # all tokens of the text, the first included
    mean_nll: float  # mean cross-entropy, nats per scored token
    perplexity: float  # exp(mean_nll)
    n_bytes: int  # UTF-8 bytes of the scored (predicted) tokens, see score_text
    bits_per_byte: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_causal(lm: Any) -> None:
    """Raise unless `lm` predicts next tokens: a bidirectional encoder (MiniLM) sees the
    token it would be predicting, and one without an LM head has no vocabulary scores."""
    cfg = lm.model.cfg
    if not (cfg.causal and cfg.lm_head):
        name = getattr(lm, "name", "this model")
        what = "a bidirectional encoder" if not cfg.causal else "a model without an LM head"
        raise ValueError(f"model: {name!r} is {what}, not a causal language model; "
                         "it makes no next-token predictions to score")


@torch.no_grad()
def score_text(lm: Any, text: str, top_k: int = 5) -> NextTokenScores:
    """Score `text` token by token under `lm` (a `llmlab.load(...)` result).

    The text is encoded as is (no BOS is added), so the first token is only context and
    tokens 2..T are scored. Bits per byte = sum of the scored tokens' NLL / ln 2, divided by
    the number of bytes those tokens decode to (the tokenizer's raw bytes for each predicted
    token, i.e. the text's UTF-8 bytes minus the first token's). Dividing by the bytes the
    model actually predicted keeps bpb comparable across tokenizers.

    A text longer than the model's `max_seq_len` raises ValueError rather than being
    truncated silently: a sliding window would change what each position sees.
    """
    require_causal(lm)
    model, tok = lm.model, lm.tokenizer
    ids = tok.encode(text)
    limit = model.cfg.max_seq_len
    if len(ids) < 2:
        raise ValueError(f"text: needs at least 2 tokens to score, got {len(ids)}")
    if len(ids) > limit:
        raise ValueError(f"text: {len(ids)} tokens is longer than the model's "
                         f"max_seq_len={limit}; shorten it")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")

    was_training = model.training
    model.eval()  # dropout off: the scores must be deterministic
    try:
        x = torch.tensor([ids], dtype=torch.long, device=model.device)
        inputs, targets = x[:, :-1], x[:, 1:]
        # One pass: the top-k needs the whole distribution at each position anyway (a page
        # scores hundreds of tokens, so (T, vocab) logits are small here).
        logp = model(inputs).logits[0].float().log_softmax(-1)
        nll = -logp.gather(-1, targets[0, :, None])[:, 0]  # -log p of each next token
        top_lp, top_i = logp.topk(min(top_k, logp.shape[-1]), dim=-1)
        top_p = top_lp.exp()
    finally:
        model.train(was_training)

    nll_l, top_p_l, top_i_l = nll.tolist(), top_p.tolist(), top_i.tolist()
    scored = ids[1:]
    pieces = tok.pieces(ids)
    tokens = [
        TokenScore(id=t, piece=pieces[j + 1], logprob=-nll_l[j], p=math.exp(-nll_l[j]),
                   surprisal=nll_l[j],
                   top_ids=top_i_l[j], top_pieces=tok.pieces(top_i_l[j]),
                   top_probs=top_p_l[j])
        for j, t in enumerate(scored)
    ]
    total = sum(nll_l)
    mean = total / len(scored)
    n_bytes = sum(len(tok.decode_bytes([t])) for t in scored)
    return NextTokenScores(
        first_id=ids[0], first_piece=pieces[0], tokens=tokens, n_tokens=len(ids), mean_nll=mean,
        perplexity=math.exp(mean), n_bytes=n_bytes,
        bits_per_byte=total / math.log(2) / n_bytes if n_bytes else math.nan,
    )
