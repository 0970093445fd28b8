"""Weight-only int8 and int4 for fast CPU decoding.

At batch 1 a decode step reads every weight once and does little arithmetic with it, so
its speed is set by bytes moved. Storing weights as int8 with one bf16 scale per output
row halves the bytes of bf16 (quarters fp32); activations stay bf16, and torch's
`_weight_int8pack_mm` kernel dequantises on the fly.

int4 halves them again: groups of 32 weights along the input, each with a scale and a
minimum, w = scale * q + min with q in 0..15. That is llama.cpp's Q4_1, which is what
SmolLM2's GGUF holds, so quantising its (exactly dequantised) weights again gives back the
file's own values, up to bf16 rounding of the scales. torch's `_weight_int4pack_mm_for_cpu`
runs decode; prefill dequantises and runs one dense matmul.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.model.layers import MLP, Attention


def quantize_rows_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: w ~= q * scale[:, None]."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class WeightOnlyLinear(nn.Module):
    """A Linear whose weight is stored quantized: decode rows go to a CPU weight-only kernel
    (`decode`), prefill rows to one dense matmul with the dequantised weight."""

    act_dtype: torch.dtype
    out_features: int
    use_kernel: bool

    def _bias(self, linear: nn.Linear) -> None:
        # (a buffer either way: `self.bias = None` first would block registering it)
        self.register_buffer("bias", None if linear.bias is None
                             else linear.bias.detach().to(self.act_dtype))

    def decode(self, x2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(self.act_dtype)
        # The weight-only kernels are GEMV-like; prefill is compute-bound (and non-CPU
        # devices have no kernel): dequantise, then one dense matmul.
        y = self.decode(x2) if self.use_kernel and x2.shape[0] <= 16 \
            else F.linear(x2, self.dequantize())
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


class Int8Linear(WeightOnlyLinear):
    def __init__(self, linear: nn.Linear, act_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        q, scale = quantize_rows_int8(linear.weight.detach())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.act_dtype = act_dtype
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale.to(act_dtype))
        self._bias(linear)
        self.use_kernel = q.device.type == "cpu" and hasattr(torch.ops.aten, "_weight_int8pack_mm")

    def dequantize(self) -> torch.Tensor:
        return self.weight_int8.to(self.act_dtype) * self.scale[:, None]

    def decode(self, x2: torch.Tensor) -> torch.Tensor:
        """(rows, K) activations in act_dtype, the weight-only kernel (CPU)."""
        return torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scale)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 per-row"


def quantize_groups_int4(w: torch.Tensor, group: int = 32
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit per group of `group` inputs (llama.cpp's Q4_1): w ~= scale q + lo,
    q (N, K) uint8 in 0..15, scale and lo (N, K / group)."""
    n, k = w.shape
    g = w.float().reshape(n, k // group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8)
    return q.reshape(n, k), scale, lo


class Int4Linear(WeightOnlyLinear):
    """Weight-only int4 (groups of `group` along the input) with bf16 activations."""

    def __init__(self, linear: nn.Linear, group: int = 32,
                 act_dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        n, k = linear.weight.shape
        if k % group or k % 2:
            raise ValueError(f"int4 needs in_features divisible by {group}, got {k}")
        q, scale, lo = quantize_groups_int4(linear.weight.detach(), group)
        self.in_features, self.out_features, self.group = k, n, group
        self.act_dtype = act_dtype
        # The kernel computes (q - 8) * scale + zero: zero = lo + 8 scale.
        sz = torch.stack([scale, lo + 8 * scale], -1).transpose(0, 1).contiguous()
        self.register_buffer("scales_zeros", sz.to(act_dtype))  # (K / group, N, 2)
        # Two copies of q, the same bytes as int8: torch's packed layout (opaque, for the
        # decode kernel) and plain nibbles (low = even input), to dequantise for prefill.
        self.use_kernel = hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") \
            and q.device.type == "cpu"
        if self.use_kernel:
            self.register_buffer("weight_int4pack", torch.ops.aten
                                 ._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2))
        self.register_buffer("weight_nibbles", q[:, 0::2] | (q[:, 1::2] << 4))
        self._bias(linear)

    def dequantize(self) -> torch.Tensor:
        """The (N, K) weight in the activation dtype."""
        b = self.weight_nibbles
        q = torch.stack([b & 15, b >> 4], -1).reshape(self.out_features, -1)
        q = q.reshape(self.out_features, -1, self.group).to(self.scales_zeros.dtype)
        scale, zero = self.scales_zeros.transpose(0, 1).unbind(-1)  # (N, K / group)
        return ((q - 8) * scale[..., None] + zero[..., None]).reshape(self.out_features, -1)

    def decode(self, x2: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight_int4pack,
                                                          self.group, self.scales_zeros)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int4 groups of {self.group}"


def _fuse(linears: list[nn.Linear]) -> nn.Linear:
    w = torch.cat([lin.weight.detach() for lin in linears], 0)
    out = nn.Linear(w.shape[1], w.shape[0], bias=linears[0].bias is not None)
    out.weight = nn.Parameter(w)
    if out.bias is not None:
        out.bias = nn.Parameter(torch.cat([lin.bias.detach() for lin in linears]))
    return out


class FusedAttention(Attention):
    """Self-attention whose q, k and v come from one matmul, `qkv_fused` (rows q, k, v)."""

    qkv_fused: nn.Module

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nq, nkv = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        return self.qkv_fused(x).split([nq, nkv, nkv], dim=-1)


class FusedMLP(MLP):
    """A SwiGLU MLP whose gate and up come from one matmul, `gate_up_fused` (rows gate, up)."""

    gate_up_fused: nn.Module

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        g, u = self.gate_up_fused(x).chunk(2, dim=-1)
        return F.silu(g) * u


def fuse_projections_(model: nn.Module) -> nn.Module:
    """Fuse Q/K/V and gate/up into one matmul each, in place: decoding a small model is bound
    by kernel launches, so three GEMVs cost about three times one. Inference only: the
    separate projections are removed (adapters and training need them)."""
    for mod in list(model.modules()):
        # The module becomes its fused kind in place (as torch's parametrize does): its
        # other children, attributes and hooks stay as they are.
        if type(mod) is Attention and not mod.cross:
            mod.qkv_fused = _fuse([mod.q_proj, mod.k_proj, mod.v_proj])
            del mod.q_proj, mod.k_proj, mod.v_proj
            mod.__class__ = FusedAttention
        elif type(mod) is MLP and mod.kind == "swiglu":
            mod.gate_up_fused = _fuse([mod.gate_proj, mod.up_proj])
            del mod.gate_proj, mod.up_proj
            mod.__class__ = FusedMLP
    return model


def _quantize_(model: nn.Module, act_dtype: torch.dtype,
               make: Callable[[nn.Linear, bool], nn.Module]) -> nn.Module:
    """Fuse Q/K/V and gate/up, cast the rest to `act_dtype`, and swap every nn.Linear for
    `make(linear, is_lm_head)`, in place."""
    fuse_projections_(model)
    model.to(act_dtype)
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.Linear):
                setattr(mod, child_name, make(child, not name and child_name == "lm_head"))
    return model


def quantize_int4_(model: nn.Module, group: int = 32,
                   act_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """As `quantize_int8_`, with int4 groups for the blocks' projections. The LM head stays
    int8: SmolLM2's GGUF keeps its (tied) embedding in 8 bits (Q8_0), so 4 bits there would
    lose more than the file does. A layer whose input size isn't a multiple of `group`
    stays int8 too."""
    return _quantize_(model, act_dtype, lambda lin, head: Int4Linear(lin, group, act_dtype)
                      if not head and lin.in_features % group == 0
                      else Int8Linear(lin, act_dtype))


def quantize_int8_(model: nn.Module, act_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Make a model decode-fast, in place: every nn.Linear (the tied LM head too) becomes
    Int8Linear, and Q/K/V and gate/up are fused into one matmul each (fewer kernel calls).

    This is for inference only: the separate projections are removed. Embeddings and norms
    are cast to `act_dtype`; the embedding table stays a full-precision lookup."""
    return _quantize_(model, act_dtype, lambda lin, head: Int8Linear(lin, act_dtype))
