"""Weight-only int8 for fast CPU decoding.

At batch 1 a decode step reads every weight once and does little arithmetic with it, so
its speed is set by bytes moved. Storing weights as int8 with one bf16 scale per output
row halves the bytes of bf16 (quarters fp32); activations stay bf16, and torch's
`_weight_int8pack_mm` kernel dequantises on the fly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def quantize_rows_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: w ~= q * scale[:, None]."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, act_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        q, scale = quantize_rows_int8(linear.weight.detach())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale.to(act_dtype))
        self.bias = None
        if linear.bias is not None:
            self.register_buffer("bias", linear.bias.detach().to(act_dtype))
        self.act_dtype = act_dtype
        self.use_kernel = q.device.type == "cpu" and hasattr(torch.ops.aten, "_weight_int8pack_mm")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(self.act_dtype)
        if self.use_kernel and x2.shape[0] <= 16:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scale)
        else:  # prefill (compute-bound) and non-CPU devices: dequantise, then one dense matmul
            w = self.weight_int8.to(self.act_dtype) * self.scale[:, None]
            y = F.linear(x2, w)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 per-row"


def _fuse(linears: list[nn.Linear]) -> nn.Linear:
    w = torch.cat([lin.weight.detach() for lin in linears], 0)
    out = nn.Linear(w.shape[1], w.shape[0], bias=linears[0].bias is not None)
    out.weight = nn.Parameter(w)
    if out.bias is not None:
        out.bias = nn.Parameter(torch.cat([lin.bias.detach() for lin in linears]))
    return out


def fuse_projections_(model: nn.Module) -> nn.Module:
    """Fuse Q/K/V and gate/up into one matmul each, in place: decoding a small model is bound
    by kernel launches, so three GEMVs cost about three times one. Inference only: the
    separate projections are removed (adapters and training need them)."""
    from llmlab.model.layers import MLP, Attention

    for mod in list(model.modules()):
        if isinstance(mod, Attention) and not mod.cross:
            mod.qkv_fused = _fuse([mod.q_proj, mod.k_proj, mod.v_proj])
            del mod.q_proj, mod.k_proj, mod.v_proj
        elif isinstance(mod, MLP) and mod.kind == "swiglu":
            mod.gate_up_fused = _fuse([mod.gate_proj, mod.up_proj])
            del mod.gate_proj, mod.up_proj
    return model


def quantize_int8_(model: nn.Module, act_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Make a model decode-fast, in place: every nn.Linear (the tied LM head too) becomes
    Int8Linear, and Q/K/V and gate/up are fused into one matmul each (fewer kernel calls).

    This is for inference only: the separate projections are removed. Embeddings and norms
    are cast to `act_dtype`; the embedding table stays a full-precision lookup."""
    fuse_projections_(model)
    model.to(act_dtype)
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.Linear):
                setattr(mod, child_name, Int8Linear(child, act_dtype))
    return model
