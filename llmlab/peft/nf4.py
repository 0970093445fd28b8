"""NF4 4-bit weights with double quantisation (Dettmers et al. 2023, QLoRA), in plain torch.

NF4: 16 levels at the quantiles of N(0, 1), rescaled to [-1, 1], with an exact 0. A weight
is split into blocks of 64; each block stores its absmax, and every weight is the index of the
nearest level to w / absmax (two 4-bit indices per byte).

Double quantisation: the fp32 absmaxes (32 bits / 64 weights = 0.5 bit per weight) are
themselves quantised: their mean is subtracted, then blocks of 256 are stored as int8 with one
fp32 scale per block: 8/64 + 32/(64*256) = 0.127 bits per weight instead of 0.5. (QLoRA
stores them as 8-bit floats; a symmetric int8 grid is our simpler choice, same size.)

Compute dequantises the weight straight into the compute dtype (one table look-up per byte
gives both of its weights) and runs an ordinary matmul; slower than a fused kernel, but the
stored base stays at ~4.13 bits per weight. The dequantised weight is a temporary: backward
dequantises again rather than keeping it (`FrozenLinear`), so training memory holds only the
4-bit copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The NF4 code book as published with QLoRA (bitsandbytes' `NF4` table).
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
BLOCK = 64
ABSMAX_BLOCK = 256


def nf4_codebook(device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.tensor(NF4_LEVELS, dtype=torch.float32, device=device)


def quantize_nf4(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pack a weight into NF4 indices + double-quantised block absmaxes."""
    n = w.numel()
    if n % BLOCK:
        raise ValueError(f"NF4 needs a multiple of {BLOCK} weights, got {tuple(w.shape)}")
    blocks = w.detach().float().reshape(-1, BLOCK)
    absmax = blocks.abs().amax(dim=1).clamp(min=1e-12)
    normed = blocks / absmax[:, None]
    code = nf4_codebook(w.device)
    # Nearest level by midpoints: bucketize against the 15 boundaries between levels.
    mids = (code[1:] + code[:-1]) / 2
    idx = torch.bucketize(normed.reshape(-1), mids).to(torch.uint8)
    packed = (idx[0::2] << 4) | idx[1::2]
    # Double quantisation of the absmaxes.
    offset = absmax.mean()
    centred = absmax - offset
    pad = (-centred.numel()) % ABSMAX_BLOCK
    cb = F.pad(centred, (0, pad)).reshape(-1, ABSMAX_BLOCK)
    scale = cb.abs().amax(dim=1).clamp(min=1e-12) / 127
    q = torch.round(cb / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return {"packed": packed, "absmax_q": q.reshape(-1)[: absmax.numel()],
            "absmax_scale": scale, "absmax_offset": offset.reshape(1)}


_BYTE_TABLES: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _byte_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(256, 2): the two NF4 levels a packed byte holds (high nibble first)."""
    key = (device, dtype)
    if key not in _BYTE_TABLES:
        code = nf4_codebook(device)
        _BYTE_TABLES[key] = torch.stack([code.repeat_interleave(16), code.repeat(16)], 1).to(
            dtype)
    return _BYTE_TABLES[key]


def _absmax(q: dict[str, torch.Tensor]) -> torch.Tensor:
    aq = q["absmax_q"].float()
    pad = (-aq.numel()) % ABSMAX_BLOCK
    aq = F.pad(aq, (0, pad)).reshape(-1, ABSMAX_BLOCK) * q["absmax_scale"][:, None]
    return aq.reshape(-1)[: q["absmax_q"].numel()] + q["absmax_offset"]


def dequantize_nf4(q: dict[str, torch.Tensor], shape: tuple[int, ...],
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    packed = q["packed"]
    # One look-up per byte (int32 indices: a quarter of the bytes of int64 ones).
    pairs = _byte_table(packed.device, dtype).index_select(0, packed.int())
    w = pairs.view(-1, BLOCK).mul_(_absmax(q).to(dtype)[:, None])
    return w.view(shape)


def compute_dtype(x: torch.Tensor, stored: torch.dtype) -> torch.dtype:
    """The dtype a frozen layer computes in: autocast's when it is on, else the weight's."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else stored


def frozen_weight(base: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """A frozen Linear's (or NF4Linear's) weight in `dtype`, as a temporary."""
    if isinstance(base, NF4Linear):
        return base.dequantize(dtype)
    return base.weight.to(dtype)


@torch.library.custom_op("llmlab::cast_weight", mutates_args=())
def _cast_op(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return w.to(dtype, copy=True)


@_cast_op.register_fake
def _(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty_like(w, dtype=dtype)


@torch.library.custom_op("llmlab::dequantize_nf4", mutates_args=())
def _dequant_op(packed: torch.Tensor, absmax_q: torch.Tensor, absmax_scale: torch.Tensor,
                absmax_offset: torch.Tensor, shape: list[int], dtype: torch.dtype
                ) -> torch.Tensor:
    q = {"packed": packed, "absmax_q": absmax_q, "absmax_scale": absmax_scale,
         "absmax_offset": absmax_offset}
    return dequantize_nf4(q, tuple(shape), dtype)


@_dequant_op.register_fake
def _(packed: torch.Tensor, absmax_q: torch.Tensor, absmax_scale: torch.Tensor,
      absmax_offset: torch.Tensor, shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    return packed.new_empty(shape, dtype=dtype)


def frozen_weight_again(base: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """`frozen_weight` for a backward pass. Under torch.compile it is an opaque op: otherwise
    the partitioner merges it with the forward's identical cast and saves that weight-sized
    temporary for backward (measured: a bf16 copy of every LoRA base weight, 6.75 MiB per
    SmolLM2 block, kept from forward to backward), which is what not saving W avoids."""
    if not torch.compiler.is_compiling():
        return frozen_weight(base, dtype)
    if isinstance(base, NF4Linear):
        return _dequant_op(base.packed, base.absmax_q, base.absmax_scale, base.absmax_offset,
                           list(base.weight_shape), dtype)
    return base.weight if base.weight.dtype == dtype else _cast_op(base.weight, dtype)


class FrozenLinear(torch.autograd.Function):
    """y = x W^T + b for a frozen W that is not saved for backward: backward fetches it again
    (for NF4, dequantises again), trading one extra dequantisation for a weight-sized buffer
    per layer. Computes in `dtype` with autocast off (the caller picked autocast's dtype)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, base: nn.Module,
                dtype: torch.dtype) -> torch.Tensor:
        ctx.base, ctx.dtype, ctx.x_dtype = base, dtype, x.dtype  # type: ignore[attr-defined]
        b = base.bias
        return F.linear(x.to(dtype), frozen_weight(base, dtype),
                        b.to(dtype) if b is not None else None)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor
                 ) -> tuple[torch.Tensor | None, None, None]:
        if not ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            return None, None, None
        with torch.autocast(g.device.type, enabled=False):
            w = frozen_weight_again(ctx.base, ctx.dtype)  # type: ignore[attr-defined]
            gx = g.to(ctx.dtype) @ w  # type: ignore[attr-defined]
        return gx.to(ctx.x_dtype), None, None  # type: ignore[attr-defined]


class NF4Linear(nn.Module):
    """A frozen Linear whose weight is stored in NF4 (buffers, never trained)."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.dtype = compute_dtype or linear.weight.dtype
        for k, v in quantize_nf4(linear.weight).items():
            self.register_buffer(k, v)
        self.bias = None
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        q = {k: getattr(self, k) for k in ("packed", "absmax_q", "absmax_scale", "absmax_offset")}
        return dequantize_nf4(q, self.weight_shape, dtype or self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = compute_dtype(x, self.dtype)
        with torch.autocast(x.device.type, enabled=False):
            return FrozenLinear.apply(x, self, dt)

    def storage_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())


def quantize_model(model: nn.Module, names: list[str]) -> int:
    """Replace the named Linears with NF4Linear in place; returns their stored bytes."""
    total = 0
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        q = NF4Linear(getattr(owner, child))
        setattr(owner, child, q)
        total += q.storage_bytes()
    return total
