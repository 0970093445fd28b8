"""Sentence embeddings from an encoder: mean pooling over real tokens, then L2 normalisation
(the recipe of all-MiniLM-L6-v2's sentence-transformers config)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


@torch.inference_mode()
def embed(lm: Any, texts: list[str], batch_size: int = 64, normalize: bool = True) -> torch.Tensor:
    """(len(texts), d_model) float32 embeddings. Sorts by length so batches pad little."""
    if isinstance(texts, str):
        texts = [texts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), lm.cfg.d_model)
    for s in range(0, len(texts), batch_size):
        idx = order[s : s + batch_size]
        ids, mask = lm.tokenizer.batch([texts[i] for i in idx])
        h = lm.model.encode(ids.to(lm.model.device), mask.to(lm.model.device))
        e = mean_pool(h.float(), mask.to(h.device))
        if normalize:
            e = F.normalize(e, dim=-1)
        out[idx] = e.cpu()
    return out
