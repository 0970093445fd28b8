"""Prompt log-probabilities: how likely the model finds each token of a given text, from one
forward pass. This is what `/v1/completions` returns under `echo` and what
lm-evaluation-harness sums for a loglikelihood task. As in `logprobs.py`, the raw
distribution: no temperature or other sampling setting applies."""

from __future__ import annotations

import torch

from llmlab.generate.logprobs import TokenLogprob, check_top
from llmlab.model.transformer import Transformer

CHUNK = 256  # positions per LM-head call: (CHUNK, vocab) logits at a time, not (T, vocab)


@torch.inference_mode()
def prompt_logprobs(model: Transformer, ids: list[int], top: int = 0) -> list[TokenLogprob | None]:
    """Each token's log p(token | tokens before it), with the `top` most likely alternatives
    at that position. The first token has no context to be predicted from: None."""
    check_top(top, "top")
    if not ids:
        raise ValueError("ids: at least one token is needed")
    if len(ids) > model.cfg.max_seq_len:
        raise ValueError(f"ids: {len(ids)} tokens; the model reads at most "
                         f"{model.cfg.max_seq_len}")
    was_training = model.training
    model.eval()  # dropout off: scores must be deterministic
    try:
        x = torch.tensor([ids], dtype=torch.long, device=model.device)
        out: list[TokenLogprob | None] = [None]
        if len(ids) == 1:
            return out
        # The model's fused targets path: each token's -log p without (T, vocab) logits.
        res = model(x[:, :-1], targets=x[:, 1:], reduction="none")
        assert res.loss is not None
        chosen = (-res.loss[0]).tolist()
        tops: list[list[tuple[int, float]]] = [[] for _ in chosen]
        if top > 0:  # the alternatives need the distribution: the LM head, a chunk at a time
            h = res.hidden[0]
            for s in range(0, h.shape[0], CHUNK):
                logp = model.lm_head(h[s : s + CHUNK]).float().log_softmax(-1)
                # The chosen token's logprob from this same distribution, so that it equals
                # the top entry bit for bit when it is the argmax: lm-eval's is_greedy tests
                # `logprob == max(top_logprobs.values())`.
                y = x[0, 1 + s : 1 + s + logp.shape[0], None]
                chosen[s : s + CHUNK] = logp.gather(-1, y)[:, 0].tolist()
                tv, ti = logp.topk(min(top, logp.shape[-1]), dim=-1)
                tops[s : s + CHUNK] = [list(zip(i, v, strict=True))
                                       for i, v in zip(ti.tolist(), tv.tolist(), strict=True)]
        out += [TokenLogprob(t, c, tp) for t, c, tp in zip(ids[1:], chosen, tops, strict=True)]
        return out
    finally:
        model.train(was_training)
