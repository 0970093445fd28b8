"""Position information: sinusoidal tables (Vaswani et al. 2017) and rotary embeddings (RoPE)."""

from __future__ import annotations

import torch


def sinusoidal_table(n_pos: int, d_model: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d))."""
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, two_i / d_model)
    pe = torch.zeros(n_pos, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return pe.float()


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """The rotation angle of each frequency pair at each position: (..., head_dim // 2)."""
    inv = rope_inv_freq(head_dim, theta).to(positions.device)
    return positions.double()[..., None] * inv


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for the `rotate_half` layout (HF Llama): frequencies repeated twice."""
    ang = rope_angles(positions, head_dim, theta)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


class RopeTable:
    """cos and sin of every position up to `max_len`, built on first use for a device and
    dtype: a step then only indexes the table."""

    def __init__(self, head_dim: int, theta: float, max_len: int) -> None:
        self.head_dim, self.theta, self.max_len = head_dim, theta, max_len
        self._key: tuple[torch.device, torch.dtype] | None = None
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, positions: torch.Tensor, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin: (B or 1, T, head_dim) for `positions` (B or 1, T)."""
        if torch.compiler.is_compiling():
            # From the positions, in the graph (one fused kernel): building the cached table
            # here would be a side effect that dynamo guards on, so the second call would
            # recompile the whole model.
            return rope_cos_sin(positions, self.head_dim, self.theta, dtype)
        if self._key != (positions.device, dtype) or self._table is None:
            pos = torch.arange(self.max_len, device=positions.device)
            self._table = rope_cos_sin(pos, self.head_dim, self.theta, dtype)
            self._key = (positions.device, dtype)
        cos, sin = self._table
        if positions.shape[0] == 1:
            return cos[positions[0]][None], sin[positions[0]][None]
        return cos[positions], sin[positions]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class _RopeFn(torch.autograd.Function):
    """RoPE with its backward written out: the rotation's transpose, g cos + R^T(g sin) with
    R^T(y1, y2) = (y2, -y1). About 6 kernels, where autograd's chain through the two muls,
    the neg and the cat (and the slices it reassembles) takes about 10: it matters where a
    small model's eager step is bound by launches.

    The result is in x's dtype. Under autocast, bf16 q and k meet fp32 tables, and attention
    would cast the fp32 product back to bf16 anyway: the same values, two kernels fewer."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.x_dtype = x.dtype  # type: ignore[attr-defined]
        return (x * cos + rotate_half(x) * sin).to(x.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor
                 ) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors  # type: ignore[attr-defined]
        gs = g * sin
        h = gs.shape[-1] // 2
        gx = g * cos + torch.cat([gs[..., h:], -gs[..., :h]], dim=-1)
        return gx.to(ctx.x_dtype), None, None  # type: ignore[attr-defined]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (B or 1, T, D). Rotates each (i, i + D/2) pair."""
    cos, sin = cos[:, None], sin[:, None]
    if torch.is_grad_enabled() and x.requires_grad and not (cos.requires_grad
                                                          or sin.requires_grad):
        return _RopeFn.apply(x, cos, sin)
    return x * cos + rotate_half(x) * sin


def unpermute_llamacpp(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation (it turns rotate_half pairs into adjacent pairs)."""
    d_out, d_in = w.shape
    head_dim = d_out // n_head
    return w.reshape(n_head, head_dim // 2, 2, d_in).transpose(1, 2).reshape(d_out, d_in)
