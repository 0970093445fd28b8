"""`Linear`: nn.Linear whose fp32 CPU matmuls (forward and both backward products) run in
oneDNN instead of the BLAS that `F.linear` calls.

Why: PyTorch's CPU wheels send fp32 `mm` to MKL. On the AMD EPYC (Zen 5, AVX-512) this was
measured on, MKL_VERBOSE names its generic "Intel(R) Architecture processors" code path, and
the tiny-cpu step's products peaked at 84-98 GFLOP/s on one core (about what 256-bit FMAs
give at this clock); oneDNN, which dispatches on the instruction set, ran them at 134-209
(benchmarks/cpu_gemm.py, BENCHMARKS.md). The arithmetic is the same fp32 multiply-accumulate;
only the kernel differs. (On Intel CPUs MKL's own AVX-512 path may close the gap.)

oneDNN is reached through `torch.ops.mkldnn._linear_pointwise(a, b)` = a @ b.T (the op
torch.compile's CPU backend uses). It has no autograd formula, so `_OneDNNLinear` supplies
the backward; under torch.compile the product is an opaque custom op (`llmlab::mm_nt`) that
inductor calls while fusing everything around it. Small row counts (decoding) keep
`F.linear`, and so do other devices and dtypes, and autocast. `speed.onednn` (llmlab/settings.py;
`LLMLAB_ONEDNN=0`) turns it off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from llmlab.settings import speed


def _find_op():  # noqa: ANN202
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


_OP = _find_op()
MIN_ROWS = 64  # below this (decoding) the product is memory-bound: F.linear is as fast


@torch.library.custom_op("llmlab::mm_nt", mutates_args=())
def _mm_nt_op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # An opaque op for torch.compile: inductor cannot lower `_linear_pointwise` called this way.
    return _OP(a, b, None, "none", [], "")  # type: ignore[misc]


@_mm_nt_op.register_fake
def _(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.new_empty(a.shape[0], b.shape[0])


def mm_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b.T (+ bias) in oneDNN; a: (M, K), b: (N, K). Fast when `a` is row-major; `b` may
    be a transposed view."""
    if torch.compiler.is_compiling():
        y = _mm_nt_op(a, b)
        return y if bias is None else y + bias
    return _OP(a, b, bias, "none", [], "")  # type: ignore[misc]


def weight_grad(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """g.T @ x, (out, in), for g: (N, out), x: (N, in). oneDNN is fast when the smaller of
    out/in is the result's row count, so the product is taken in that orientation."""
    if g.shape[1] < x.shape[1]:
        return mm_nt(g.t(), x.t())
    return mm_nt(x.t(), g.t()).t()


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None  # noqa: ANN001
                ) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return mm_nt(x, w, b)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):  # noqa: ANN001, ANN205
        x, w = ctx.saved_tensors
        g = g.contiguous()
        need_x, need_w, need_b = ctx.needs_input_grad
        dx = mm_nt(g, w.t()) if need_x else None
        dw = weight_grad(g, x).contiguous() if need_w else None
        db = g.sum(0) if need_b and ctx.has_bias else None
        return dx, dw, db


def enabled() -> bool:
    """Whether the oneDNN path may run: this torch build has the op, and speed allows it."""
    return _OP is not None and speed.onednn


def use_onednn(x: torch.Tensor, w: torch.Tensor) -> bool:
    return (enabled() and x.device.type == "cpu" and x.dtype == w.dtype == torch.float32
            and x.numel() >= MIN_ROWS * x.shape[-1] and not torch.is_autocast_enabled("cpu"))


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, w, b), in oneDNN where that is faster (see the module docstring)."""
    if not use_onednn(x, w):
        return F.linear(x, w, b)
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad
                                    or (b is not None and b.requires_grad)):
        y = _OneDNNLinear.apply(x2, w, b)
    else:
        y = mm_nt(x2, w, b)
    return y.view(*x.shape[:-1], w.shape[0])


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) computed by `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
