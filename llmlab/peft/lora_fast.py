"""The eager fast path of LoRA training under mixed precision (autocast).

A small model's eager LoRA step is bound by kernel launches, not by the GPU's arithmetic:
SmolLM2-135M at 8x1024 on an H100 issued about 13k kernels per step (BENCHMARKS.md), most of
them small casts, scales and adds around the low-rank matmuls. This module removes them
without changing the maths:

- `CastStore` keeps every layer's A, s*B and frozen W in the compute dtype, in flat buffers
  refreshed by a handful of kernels per optimizer step for the whole model (not 4 casts per
  layer per step). The values are the ones the per-layer casts give.
- `LoraGroupFn` runs the LoRA layers that read one input (q, k, v; gate, up) as one matmul for
  the frozen weights, one for the A's and one for a block-diagonal B, and their backward as
  one matmul each.
- `shared_cast`: sibling layers cast their common input once, and save it once for backward.
- `_mm_f32`: on CUDA an adapter's fp32 gradient comes straight out of cuBLAS.

`LoraFn` is also the path everywhere else (one layer, its casts made in place; compiled
graphs, where inductor fuses the casts)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from llmlab.peft.nf4 import NF4Linear, frozen_weight, frozen_weight_again


def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with an fp32 result. On CUDA, cuBLAS writes fp32 from bf16/fp16 inputs in the one
    kernel (an adapter's gradient needs no separate cast); elsewhere, and when compiling
    (inductor fuses the cast), the product is cast."""
    if a.is_cuda and a.dtype != torch.float32 and _MM_OUT_DTYPE[0] \
            and not torch.compiler.is_compiling():
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # a torch without this CUDA kernel: cast instead
            _MM_OUT_DTYPE[0] = False
    return (a @ b).to(torch.float32)


_MM_OUT_DTYPE = [hasattr(torch.ops.aten.mm, "dtype")]  # torch.mm(..., out_dtype=)

# The last input cast by `shared_cast`: (x, its version, dtype, the cast). Sibling
# projections (q, k, v; gate, up) are called one after another with the same x.
_X16: list[tuple[torch.Tensor, int, torch.dtype, torch.Tensor] | None] = [None]


def shared_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """x in `dtype` (None if it is already), cast once for consecutive layers given the same
    x. The reference to x is held until the next cast or `clear_shared_cast`, so its id can't
    be reused by another tensor meanwhile."""
    if x.dtype == dtype:
        return None
    c = _X16[0]
    if c is not None and c[0] is x and c[1] == x._version and c[2] == dtype:
        return c[3]
    x16 = x.detach().to(dtype)
    _X16[0] = (x, x._version, dtype, x16)
    return x16


def clear_shared_cast() -> None:
    _X16[0] = None


# Optimizer steps taken (every torch.optim optimizer, fused ones included) since the first
# CastStore: LoRA's cached casts (refresh_casts) are stale after any of them.
_OPT_STEPS = [0]


def _count_step(*_: object) -> None:
    _OPT_STEPS[0] += 1


# Module-tree changes since the first CastStore: bumped whenever any module, parameter or
# buffer is registered (torch's global registration hooks) and when LoRA groups are
# installed or removed. `refresh_casts` walks a model for its LoRA layers again only after a
# bump; a walk costs milliseconds of host time per step, a launch-bound GPU step's real
# cost. (Correctness never rests on it: each layer and group checks its casts before use.)
_TREE_GEN = [0]


def bump_tree_gen(*_: object) -> None:
    _TREE_GEN[0] += 1


_HOOKED = [False]


def _install_hooks() -> None:
    """torch's global hooks that keep the two counts above, installed once, when the first
    store of cached casts is made (nothing is cached before, so nothing can go stale)."""
    if _HOOKED[0]:
        return
    _HOOKED[0] = True
    register_optimizer_step_post_hook(_count_step)
    nn.modules.module.register_module_module_registration_hook(bump_tree_gen)
    nn.modules.module.register_module_parameter_registration_hook(bump_tree_gen)
    nn.modules.module.register_module_buffer_registration_hook(bump_tree_gen)


class LoraFn(torch.autograd.Function):
    """y = x W^T + bias + s (xd A^T) B^T for a frozen W (xd: x after dropout; None: x).

    Saved for backward: xd, xa = xd A^T (N x r), A and sB (the scale folded into B's cast:
    one fused kernel when compiled, and no (N, r) scale pass in backward); not W. Backward:
      g_xa = g sB,  dB = s g^T xa,  dA = g_xa^T xd,  dx = g W (+ g_xa A, added in place).

    `casts` (eager training, `refresh_casts`): A, sB and W already in `dtype`, refreshed once
    per optimizer step for every layer together, so the step launches no per-layer cast.
    `x16`: x already in `dtype`, cast once for the layers that share an input (q, k, v; gate,
    up), which also keeps one saved copy for their backward instead of one each."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor,
                xd: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, base: nn.Module,
                scaling: float, dtype: torch.dtype,
                casts: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
                x16: torch.Tensor | None = None) -> torch.Tensor:
        x2 = (x if x16 is None else x16).reshape(-1, x.shape[-1]).to(dtype)
        xd2 = x2 if xd is None else xd.reshape(-1, xd.shape[-1]).to(dtype)
        if casts is None:
            ad, bs, w16 = a.to(dtype), (b * scaling).to(dtype), None
        else:
            ad, bs, w16 = casts
        xa = xd2 @ ad.t()
        w, bias = (frozen_weight(base, dtype) if w16 is None else w16), base.bias
        y = torch.addmm(bias.to(dtype), x2, w.t()) if bias is not None else x2 @ w.t()
        y.addmm_(xa, bs.t())
        # A cached W costs nothing to keep; saving it also checks it is unchanged in backward.
        ctx.save_for_backward(xd2, xa, ad, bs, *(() if w16 is None else (w16,)))
        ctx.base, ctx.scaling, ctx.dtype = base, scaling, dtype  # type: ignore[attr-defined]
        ctx.same = xd is None  # type: ignore[attr-defined]
        xd_dt = x.dtype if xd is None else xd.dtype
        ctx.meta = (x.shape, x.dtype, xd_dt, a.dtype, b.dtype)  # type: ignore[attr-defined]
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor) -> tuple:
        xd2, xa, ad, bs, *w16 = ctx.saved_tensors  # type: ignore[attr-defined]
        shape, x_dt, xd_dt, a_dt, b_dt = ctx.meta  # type: ignore[attr-defined]
        need_x, need_xd, need_a, need_b = ctx.needs_input_grad[:4]  # type: ignore[attr-defined]
        s, dt = ctx.scaling, ctx.dtype  # type: ignore[attr-defined]
        gx = gxd = ga = gb = None
        with torch.autocast(g.device.type, enabled=False):
            g2 = g.reshape(-1, g.shape[-1]).to(dt)
            gxa = g2 @ bs
            if need_b:
                gb = (_mm_f32(g2.t(), xa) if b_dt == torch.float32
                      else g2.t() @ xa).mul_(s).to(b_dt)
            if need_a:
                ga = (_mm_f32(gxa.t(), xd2) if a_dt == torch.float32
                      else gxa.t() @ xd2).to(a_dt)
            if need_x:
                w = w16[0] if w16 else frozen_weight_again(ctx.base, dt)  # type: ignore[attr-defined]
                gx = g2 @ w
                if ctx.same:  # type: ignore[attr-defined]
                    gx.addmm_(gxa, ad)
                gx = gx.view(shape).to(x_dt)
            if need_xd and not ctx.same:  # type: ignore[attr-defined]
                gxd = (gxa @ ad).view(shape).to(xd_dt)
        return gx, gxd, ga, gb, None, None, None, None, None



class LoraGroupFn(torch.autograd.Function):
    """k LoRA layers of one input x as one: Y = [y_1 | ... | y_k] (columns), with
        Y = x W_cat^T + bias + (x A_cat^T) B_bd^T,
    W_cat the frozen weights stacked by rows, A_cat the A's stacked by rows and B_bd the
    blocks s*B_i on the diagonal of a zero matrix (the off-diagonal FLOPs are r-sized and
    cost far less than the launches they save). Backward, with g_xa = G B_bd:
        dA_cat = g_xa^T x (row blocks: dA_i),  dB_i = s * (G^T (x A_cat^T))[block i],
        dx = G W_cat + g_xa A_cat.
    bufs = (A_cat, B_bd, W_cat, bias or None), all in the compute dtype (CastStore)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor,
                x16: torch.Tensor | None, bufs: tuple, blocks: tuple, scaling: float,
                *ab: torch.Tensor) -> torch.Tensor:
        a_cat, bd, w_cat, bias = bufs
        dt = a_cat.dtype
        x2 = (x if x16 is None else x16).reshape(-1, x.shape[-1]).to(dt)
        y = torch.addmm(bias, x2, w_cat.t()) if bias is not None else x2 @ w_cat.t()
        xa = x2 @ a_cat.t()
        y.addmm_(xa, bd.t())
        ctx.save_for_backward(x2, xa, a_cat, bd, w_cat)
        ctx.meta = (x.shape, x.dtype, blocks, scaling,  # type: ignore[attr-defined]
                    [p.dtype for p in ab])
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor) -> tuple:
        x2, xa, a_cat, bd, w_cat = ctx.saved_tensors  # type: ignore[attr-defined]
        shape, x_dt, blocks, s, p_dt = ctx.meta  # type: ignore[attr-defined]
        need = ctx.needs_input_grad  # type: ignore[attr-defined]
        k = len(blocks)
        with torch.autocast(g.device.type, enabled=False):
            g2 = g.reshape(-1, g.shape[-1]).to(a_cat.dtype)
            gxa = g2 @ bd
            ga: list[torch.Tensor | None] = [None] * k
            gb: list[torch.Tensor | None] = [None] * k
            if any(need[5:5 + k]):
                ga_cat = _mm_f32(gxa.t(), x2)
                for i, (_, _, r0, r) in enumerate(blocks):
                    ga[i] = ga_cat[r0:r0 + r].to(p_dt[i])
            if any(need[5 + k:]):
                gb_all = _mm_f32(g2.t(), xa).mul_(s)
                for i, (d0, d, r0, r) in enumerate(blocks):
                    gb[i] = gb_all[d0:d0 + d, r0:r0 + r].to(p_dt[k + i])
            gx = None
            if need[0]:
                gx = g2 @ w_cat
                gx.addmm_(gxa, a_cat)
                gx = gx.view(shape).to(x_dt)
        return (gx, None, None, None, None, *ga, *gb)


class CastStore:
    """Compute-dtype copies of the LoRA layers' A, s*B and frozen W, for one dtype and device.

    All A's live in one flat buffer and all B's in another, so a refresh is a cat, a scale,
    a cast and a copy for the whole model. Each layer's `_casts` gets views into them. For a
    group (`LoraGroupFn`) the A's are consecutive (A_cat is a view), its B's sit on the
    diagonal of a zero block (written through an index, so the zeros stay), and its frozen
    weights are stacked into one W_cat once."""

    def __init__(self, layers: list[Any], groups: list[Any], dtype: torch.dtype) -> None:
        _install_hooks()
        self.dtype, self.groups = dtype, groups
        dev = layers[0].lora_A.weight.device
        self.device, self.gen = dev, -1  # gen: the tree generation it was checked at
        self.key = self.structure(layers, groups, dtype)
        in_group = {id(m) for g in groups for m in g.members()}
        order = [m for g in groups for m in g.members()]
        order += [m for m in layers if id(m) not in in_group]
        self.order = order
        sizes = [m.lora_A.weight.numel() for m in order]
        self.flat_a = torch.empty(sum(sizes), dtype=dtype, device=dev)
        a_view, off = {}, 0
        for m, n in zip(order, sizes, strict=True):
            a_view[id(m)] = self.flat_a[off:off + n].view(m.lora_A.weight.shape)
            off += n
        # B: a zero block per group (its B's on the diagonal), then each other layer's B.
        # blocks: each member's (row 0, rows, column 0, columns) in its group's B_bd.
        idx, b_view, g_bd, off = [], {}, [], 0
        for g in groups:
            ms = g.members()
            d_all, r_all = sum(m.out_features for m in ms), sum(m.r for m in ms)
            blocks, d0, r0 = [], 0, 0
            for m in ms:
                rows = torch.arange(d0, d0 + m.out_features)[:, None] * r_all
                idx.append((off + rows + torch.arange(r0, r0 + m.r)[None, :]).reshape(-1))
                b_view[id(m)] = (len(g_bd), d0, m.out_features, r0, m.r)
                blocks.append((d0, m.out_features, r0, m.r))
                d0, r0 = d0 + m.out_features, r0 + m.r
            g_bd.append((off, d_all, r_all, tuple(blocks)))
            off += d_all * r_all
        for m in order[len(b_view):]:
            n = m.lora_B.weight.numel()
            idx.append(torch.arange(off, off + n))
            b_view[id(m)] = off
            off += n
        self.flat_b = torch.zeros(off, dtype=dtype, device=dev)
        self.idx_b = torch.cat(idx).to(dev)
        scales = {m.scaling for m in order}
        self.scale: float | torch.Tensor = scales.pop() if len(scales) == 1 else torch.cat(
            [torch.full((m.lora_B.weight.numel(),), m.scaling) for m in order]).to(dev)
        bd = [self.flat_b[o:o + d * r].view(d, r) for o, d, r, _ in g_bd]
        self.views = {}
        for m in order:
            v = b_view[id(m)]
            if isinstance(v, tuple):
                gi, d0, d, r0, r = v
                self.views[id(m)] = (a_view[id(m)], bd[gi][d0:d0 + d, r0:r0 + r])
            else:
                self.views[id(m)] = (a_view[id(m)], self.flat_b[v:v + m.lora_B.weight.numel()]
                                     .view(m.lora_B.weight.shape))
        self.g_views = []
        a0 = 0
        for g, b, (_, _, _, blocks) in zip(groups, bd, g_bd, strict=True):
            ms = g.members()
            n = sum(m.lora_A.weight.numel() for m in ms)
            self.g_views.append((self.flat_a[a0:a0 + n].view(-1, ms[0].in_features), b, blocks))
            a0 += n
        self.w_key: tuple = ()
        self.w16: dict[int, torch.Tensor | None] = {}

    @staticmethod
    def structure(layers: list[Any], groups: list[Any], dtype: torch.dtype) -> tuple:
        return (dtype, layers[0].lora_A.weight.device, tuple(id(m) for m in layers),
                tuple((id(g), *(id(m) for m in g.members())) for g in groups))

    def __deepcopy__(self, memo: dict) -> None:
        return None  # a copied model builds its own

    def _frozen(self) -> None:
        """The frozen weights in the compute dtype: stacked per group, else one per layer.
        Rebuilt only when one of them changed (a merge, a load, an in-place edit)."""
        dt = self.dtype
        self.w16 = {}
        for g, (a_cat, bd, blocks) in zip(self.groups, self.g_views, strict=True):
            ms = g.members()
            w_cat = torch.cat([m.base_layer.weight for m in ms]).to(dt)
            b = [m.base_layer.bias for m in ms]
            bias = None if b[0] is None else torch.cat(b).to(dt)
            g.bufs = ((a_cat, bd, w_cat, bias), blocks, ms[0].scaling,
                      tuple(id(m) for m in ms))
            for m, (d0, d, _, _) in zip(ms, blocks, strict=True):
                self.w16[id(m)] = w_cat[d0:d0 + d]
        for m in self.order:
            if id(m) not in self.w16:
                base = m.base_layer
                self.w16[id(m)] = None if isinstance(base, NF4Linear) or \
                    base.weight.dtype == dt else base.weight.to(dt)

    @torch.no_grad()
    def refresh(self) -> bool:
        """Make the casts current; False (nothing done) if a layer moved to another device,
        which needs a new store."""
        dt = self.dtype
        keys = [m._cast_key(dt) for m in self.order]
        if any(k[1] != self.device for k in keys):
            return False
        if all(m._casts is not None and m._casts[0] == k
               for m, k in zip(self.order, keys, strict=True)):
            return True
        w_key = tuple(k[-1] for k in keys)
        if w_key != self.w_key:
            self._frozen()
            self.w_key = w_key
        # Copies into the buffers in place: a tensor saved by an unfinished backward fails
        # autograd's version check rather than being changed under it.
        self.flat_a.copy_(torch.cat([m.lora_A.weight.reshape(-1) for m in self.order]))
        b = torch.cat([m.lora_B.weight.reshape(-1) for m in self.order]).mul_(self.scale)
        self.flat_b.index_copy_(0, self.idx_b, b.to(dt))
        for m, k in zip(self.order, keys, strict=True):
            a16, bs16 = self.views[id(m)]
            m._casts = (k, a16, bs16, self.w16[id(m)])
        return True

