"""Record every attention layer's scores and weights while a model runs.

    with record_attention(model) as rec:
        model(ids)
    rec.attentions[layer]["weights"]  # (B, H, Tq, Tk); "scores": pre-softmax, -inf where masked

While recording, each attention module takes the written-out softmax(QK^T / sqrt(d)) path
(`Attention._explicit`, the same maths as SDPA) and appends its maps to a list of `rec`: one
entry per layer per forward pass, in the order the layers ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from llmlab.model.layers import Attention

Maps = dict[str, torch.Tensor]  # {"scores", "weights"}: (B, H, Tq, Tk) each


@dataclass
class AttentionRecord:
    attentions: list[Maps] = field(default_factory=list)  # self-attention, decoder (or only) stack
    cross: list[Maps] = field(default_factory=list)  # the decoder's cross-attention
    encoder: list[Maps] = field(default_factory=list)  # the encoder's self-attention


@contextmanager
def record_attention(model: nn.Module) -> Iterator[AttentionRecord]:
    """Point each `Attention` of `model` at the list of `rec` it belongs to, then detach them.
    The flag lives on the shared modules: callers that share a model across threads run
    forward passes one at a time (the server's lock), as they already must."""
    rec = AttentionRecord()
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, Attention)]
    try:
        for name, m in found:
            if m.cross:
                m.record = rec.cross
            elif "encoder" in name.split("."):
                m.record = rec.encoder
            else:
                m.record = rec.attentions
        yield rec
    finally:
        for _, m in found:
            m.record = None
