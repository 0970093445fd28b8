"""What a grammar allows at each step of constrained decoding, for the Decoding page: the
token chosen (greedy), how many of the vocabulary's tokens the mask leaves, the likeliest of
them, and the token the model would have picked unconstrained."""

from __future__ import annotations

from typing import Any

import torch

from llmlab.generate.constrain import Constraint, Guide
from llmlab.generate.engine import iter_decode, make_params


@torch.inference_mode()
def mask_trace(lm: Any, ids: list[int], constraint: Constraint, max_steps: int = 40,
               shown: int = 8) -> dict[str, Any]:
    """Greedy decoding of `ids` under `constraint`, one record per step."""
    params = make_params(lm.tokenizer, max_new_tokens=max_steps, temperature=0,
                         constraint=constraint)
    guide = Guide([params.constraint], params.stop_token_ids, lm.cfg.vocab_size)
    steps, out = [], []
    pieces = lm.tokenizer.pieces
    for step in iter_decode(lm.model, [ids], params, return_logits=True):
        logits = step.logits[0].float()
        allowed = guide.allowed()[0].to(logits.device)  # the same mask iter_decode applied
        probs = logits.softmax(-1)
        tok = int(step.tokens[0])
        free = int(logits.argmax())
        masked_p = probs.masked_fill(~allowed, 0)
        top = masked_p.topk(min(shown, int(allowed.sum()))).indices.tolist()
        steps.append({
            "token": {"id": tok, "piece": pieces([tok])[0]},
            "allowed": int(allowed.sum()),
            "allowed_mass": float(masked_p.sum()),  # the model's own probability inside
            "top_allowed": [{"id": i, "piece": pieces([i])[0], "p": float(probs[i])}
                            for i in top],
            "free_choice": {"id": free, "piece": pieces([free])[0],
                            "allowed": bool(allowed[free])},
        })
        guide.advance([tok])
        if bool(step.done[0]):
            break
        out.append(tok)
    return {"steps": steps, "vocab": lm.cfg.vocab_size, "text": lm.tokenizer.decode(out)}
