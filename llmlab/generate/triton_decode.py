"""Batch-1 decoding in five Triton kernels per layer, replayed as one CUDA graph.

A decode step of a small model at batch 1 is bound by kernel launches, not by bytes: the
compiled PyTorch step issues about 340 kernels per token for SmolLM2-135M (cuBLAS GEMVs
of ~4 us each, norms, RoPE, cache writes, attention, residual adds). Here each layer is:

1. RMSNorm -> fused Q/K/V GEMV -> RoPE on q and k -> k and v written into the cache;
2. attention of the one query over the cache (online softmax, grouped KV heads);
3. output-projection GEMV + residual add;
4. RMSNorm -> gate and up GEMVs -> SiLU(gate) * up;
5. down-projection GEMV + residual add;

plus an embedding gather and the final RMSNorm + LM head: 5L + 2 launches (152 for 30
layers). Every kernel reads its inputs from fixed buffers and the position from a device
tensor, so `StaticDecoder`'s graph capture works unchanged.

Numerics follow the PyTorch model: products accumulate in fp32, and values are rounded to
the model dtype where the model rounds them (projection outputs, norms, residual adds).
Prefill still runs the model's own forward and fills the same `KVCache`.

Without a GPU the kernels run in Triton's interpreter (`TRITON_INTERPRET=1`), which is how
the tests compare them with the model on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from llmlab.generate.static import StaticDecoder
from llmlab.model.layers import RMSNorm
from llmlab.model.positions import rope_cos_sin
from llmlab.model.transformer import Transformer


def supports(model: Transformer) -> str | None:
    """Why `model` can't use these kernels, or None when it can."""
    cfg = model.cfg
    checks = {
        "a decoder-only model": cfg.causal and not cfg.is_encoder_decoder and cfg.lm_head,
        "RMSNorm": cfg.norm == "rmsnorm",
        "pre-norm": cfg.prenorm,
        "RoPE": cfg.pos == "rope",
        "a SwiGLU MLP": cfg.mlp == "swiglu",
        "no biases": not cfg.bias,
        "no embedding scale or norm": not cfg.embed_scale and not cfg.embed_norm,
        "a final norm": cfg.final_norm,
        "bf16, fp16 or fp32 weights": model.dtype in (torch.bfloat16, torch.float16,
                                                       torch.float32),
    }
    missing = [k for k, ok in checks.items() if not ok]
    if missing:
        return "the Triton decoder needs " + ", ".join(missing)
    for m in model.modules():  # adapters and quantised layers change the maths
        if hasattr(m, "merged") or type(m).__name__ in ("Int8Linear", "Linear4bit"):
            return f"the Triton decoder needs plain linear layers, found {type(m).__name__}"
    return None


@triton.jit
def _scalar(ptr):
    return tl.max(tl.load(ptr + tl.arange(0, 1)), axis=0)


@triton.jit
def _embed(ids_ptr, table_ptr, out_ptr, D: tl.constexpr, DP: tl.constexpr):
    offs = tl.arange(0, DP)
    tok = _scalar(ids_ptr)
    row = tl.load(table_ptr + tok * D + offs, mask=offs < D)
    tl.store(out_ptr + offs, row, mask=offs < D)


@triton.jit
def _inv_rms(x_ptr, eps, D: tl.constexpr, DP: tl.constexpr):
    offs = tl.arange(0, DP)
    x = tl.load(x_ptr + offs, mask=offs < D, other=0.0).to(tl.float32)
    return tl.rsqrt(tl.sum(x * x, axis=0) / D + eps)


@triton.jit
def _normed_chunk(x_ptr, g_ptr, inv, kk, km):
    # The model's RMSNorm: normalise in fp32, round to the model dtype, then scale by g.
    x = tl.load(x_ptr + kk, mask=km, other=0.0)
    g = tl.load(g_ptr + kk, mask=km, other=0.0)
    xn = (x.to(tl.float32) * inv).to(x.dtype)
    return (xn.to(tl.float32) * g.to(tl.float32)).to(x.dtype).to(tl.float32)


@triton.jit
def _qkv_rope_store(x_ptr, g_ptr, wq_ptr, wk_ptr, wv_ptr, cos_ptr, sin_ptr, pos_ptr, slot_ptr,
                    q_ptr, kc_ptr, vc_ptr, c_sh, c_st, eps,
                    D: tl.constexpr, DP: tl.constexpr, HD: tl.constexpr,
                    NH: tl.constexpr, NKV: tl.constexpr, SPLIT: tl.constexpr,
                    BK: tl.constexpr):
    # Program (head, part): rows r and r + HD/2 of one head, so RoPE's pairs stay together.
    head = tl.program_id(0)
    part = tl.program_id(1)
    QR: tl.constexpr = HD // 2 // SPLIT
    r = part * QR + tl.arange(0, QR)
    if head < NH:  # the weights stay where the model keeps them: pick q, k or v's matrix
        w_ptr = wq_ptr + head * HD * D
    elif head < NH + NKV:
        w_ptr = wk_ptr + (head - NH) * HD * D
    else:
        w_ptr = wv_ptr + (head - NH - NKV) * HD * D
    rows_a = r
    rows_b = r + HD // 2
    inv = _inv_rms(x_ptr, eps, D, DP)
    acc_a = tl.zeros([QR], dtype=tl.float32)
    acc_b = tl.zeros([QR], dtype=tl.float32)
    for k0 in range(0, D, BK):
        kk = k0 + tl.arange(0, BK)
        km = kk < D
        xn = _normed_chunk(x_ptr, g_ptr, inv, kk, km)[None, :]
        wa = tl.load(w_ptr + rows_a[:, None] * D + kk[None, :], mask=km[None, :], other=0.0)
        wb = tl.load(w_ptr + rows_b[:, None] * D + kk[None, :], mask=km[None, :], other=0.0)
        acc_a += tl.sum(wa.to(tl.float32) * xn, axis=1)
        acc_b += tl.sum(wb.to(tl.float32) * xn, axis=1)
    dt = q_ptr.dtype.element_ty
    a = acc_a.to(dt).to(tl.float32)  # the projection's output, in the model dtype
    b = acc_b.to(dt).to(tl.float32)
    slot = _scalar(slot_ptr)
    if head < NH + NKV:  # q and k heads are rotated: (a, b) -> (a cos - b sin, b cos + a sin)
        pos = _scalar(pos_ptr)
        c = tl.load(cos_ptr + pos * HD + r).to(tl.float32)
        s = tl.load(sin_ptr + pos * HD + r).to(tl.float32)
        a, b = a * c - b * s, b * c + a * s
    if head < NH:
        tl.store(q_ptr + head * HD + r, a.to(dt))
        tl.store(q_ptr + head * HD + r + HD // 2, b.to(dt))
    elif head < NH + NKV:
        base = kc_ptr + (head - NH) * c_sh + slot * c_st
        tl.store(base + r, a.to(dt))
        tl.store(base + r + HD // 2, b.to(dt))
    else:
        base = vc_ptr + (head - NH - NKV) * c_sh + slot * c_st
        tl.store(base + r, a.to(dt))
        tl.store(base + r + HD // 2, b.to(dt))


@triton.jit
def _attend(q_ptr, kc_ptr, vc_ptr, slot_ptr, out_ptr, c_sh, c_st, scale,
            HD: tl.constexpr, REP: tl.constexpr, BT: tl.constexpr):
    # One query head over cache slots 0..slot, with the online softmax of FlashAttention.
    h = tl.program_id(0)
    kvh = h // REP
    d = tl.arange(0, HD)
    q = tl.load(q_ptr + h * HD + d).to(tl.float32)
    n = _scalar(slot_ptr) + 1
    m_i = tl.max(tl.full([BT], float("-inf"), tl.float32), axis=0)
    l_i = tl.sum(tl.zeros([BT], tl.float32), axis=0)
    acc = tl.zeros([HD], dtype=tl.float32)
    t0 = n * 0
    while t0 < n:  # a while loop: the interpreter can't take a tensor as range()'s bound
        t = t0 + tl.arange(0, BT)
        tm = t < n
        off = kvh * c_sh + t[:, None] * c_st + d[None, :]
        k = tl.load(kc_ptr + off, mask=tm[:, None], other=0.0).to(tl.float32)
        s = tl.sum(k * q[None, :], axis=1) * scale
        s = tl.where(tm, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        p = tl.exp(s - m_new)
        alpha = tl.exp(m_i - m_new)
        v = tl.load(vc_ptr + off, mask=tm[:, None], other=0.0).to(tl.float32)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        m_i = m_new
        t0 += BT
    tl.store(out_ptr + h * HD + d, (acc / l_i).to(out_ptr.dtype.element_ty))


@triton.jit
def _gemv_add(a_ptr, w_ptr, res_ptr, K: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # res[rows] += W[rows] @ a, rounding W @ a to the model dtype first as the model does.
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    acc = tl.zeros([BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + tl.arange(0, BK)
        km = kk < K
        a = tl.load(a_ptr + kk, mask=km, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rows[:, None] * K + kk[None, :], mask=km[None, :], other=0.0)
        acc += tl.sum(w.to(tl.float32) * a[None, :], axis=1)
    dt = res_ptr.dtype.element_ty
    res = tl.load(res_ptr + rows).to(tl.float32)
    tl.store(res_ptr + rows, (res + acc.to(dt).to(tl.float32)).to(dt))


@triton.jit
def _gate_up_silu(x_ptr, g_ptr, wg_ptr, wu_ptr, out_ptr, eps,
                  D: tl.constexpr, DP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    inv = _inv_rms(x_ptr, eps, D, DP)
    acc_g = tl.zeros([BN], dtype=tl.float32)
    acc_u = tl.zeros([BN], dtype=tl.float32)
    for k0 in range(0, D, BK):
        kk = k0 + tl.arange(0, BK)
        km = kk < D
        xn = _normed_chunk(x_ptr, g_ptr, inv, kk, km)[None, :]
        off = rows[:, None] * D + kk[None, :]
        wg = tl.load(wg_ptr + off, mask=km[None, :], other=0.0)
        wu = tl.load(wu_ptr + off, mask=km[None, :], other=0.0)
        acc_g += tl.sum(wg.to(tl.float32) * xn, axis=1)
        acc_u += tl.sum(wu.to(tl.float32) * xn, axis=1)
    dt = out_ptr.dtype.element_ty
    gt = acc_g.to(dt).to(tl.float32)
    silu = (gt / (1.0 + tl.exp(-gt))).to(dt).to(tl.float32)
    tl.store(out_ptr + rows, (silu * acc_u.to(dt).to(tl.float32)).to(dt))


@triton.jit
def _norm_head(x_ptr, g_ptr, w_ptr, out_ptr, eps, V,
               D: tl.constexpr, DP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    rm = rows < V
    inv = _inv_rms(x_ptr, eps, D, DP)
    acc = tl.zeros([BN], dtype=tl.float32)
    for k0 in range(0, D, BK):
        kk = k0 + tl.arange(0, BK)
        km = kk < D
        xn = _normed_chunk(x_ptr, g_ptr, inv, kk, km)[None, :]
        w = tl.load(w_ptr + rows[:, None] * D + kk[None, :], mask=rm[:, None] & km[None, :],
                    other=0.0)
        acc += tl.sum(w.to(tl.float32) * xn, axis=1)
    # Logits in the model dtype, as the model's LM head gives them.
    tl.store(out_ptr + rows, acc.to(out_ptr.dtype.element_ty), mask=rm)


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


@dataclass(frozen=True)
class Tiles:
    """Tile sizes: rows of a weight matrix per program, and columns per loop step. Small
    tiles make more programs, which a GEMV needs to keep enough memory requests in flight."""

    split: int = 4  # programs per attention head in the Q/K/V kernel
    rows: int = 16  # output projection, gate/up
    rows_down: int = 8
    rows_head: int = 64
    k: int = 64
    k_down: int = 128
    keys: int = 64  # cache slots per attention loop step
    warps: int = 4

    @classmethod
    def parse(cls, text: str) -> Tiles:
        """'rows=8,k=128' -> Tiles(rows=8, k=128)."""
        kw = {}
        for part in filter(None, text.split(",")):
            name, _, val = part.partition("=")
            if name not in cls.__dataclass_fields__ or not val.isdigit():
                raise ValueError(f"tile setting {part!r}: expected NAME=INT with NAME in "
                                 f"{', '.join(cls.__dataclass_fields__)}")
            kw[name] = int(val)
        return cls(**kw)


class TritonDecoder(StaticDecoder):
    """`StaticDecoder` for batch 1 whose decode step is the Triton kernels above. The kernels
    read the model's weights where they are; dropout is not applied (inference)."""

    def __init__(self, model: Transformer, max_len: int, cuda_graph: bool | None = None,
                 tiles: Tiles | None = None) -> None:
        why = supports(model)
        if why:
            raise ValueError(why)
        super().__init__(model, 1, max_len, compile=False, cuda_graph=cuda_graph)
        if self.amp:
            raise ValueError("the Triton decoder runs in the model dtype: call it outside "
                             "autocast")
        cfg, dev, dt = model.cfg, model.device, model.dtype
        assert cfg.head_dim is not None and cfg.n_kv_head is not None and cfg.d_ff is not None
        self.d, self.hd, self.nh, self.nkv = cfg.d_model, cfg.head_dim, cfg.n_head, cfg.n_kv_head
        self.t = t = tiles or Tiles()
        if self.hd & (self.hd - 1) or (self.hd // 2) % t.split:
            raise ValueError(f"head_dim {self.hd} must be a power of 2 divisible by "
                             f"2 * split ({t.split})")
        for name, n, rows in (("d_model", self.d, t.rows), ("d_ff", cfg.d_ff, t.rows),
                              ("d_model", self.d, t.rows_down)):
            if n % rows:
                raise ValueError(f"{name} {n} must be a multiple of the tile's {rows} rows")
        self.layers = []
        for blk in model.model.layers:
            at, mlp = blk.self_attn, blk.mlp
            # Views of the model's own weights (no copies): training that updates them in
            # place is seen by the next step, as with the compiled decoder.
            fused = getattr(at, "qkv_fused", None)
            nq, nkv = self.nh * self.hd, self.nkv * self.hd
            wq, wk, wv = (fused.weight.split([nq, nkv, nkv]) if fused is not None
                          else (at.q_proj.weight, at.k_proj.weight, at.v_proj.weight))
            gu = getattr(mlp, "gate_up_fused", None)
            wg, wu = (gu.weight.chunk(2) if gu is not None
                      else (mlp.gate_proj.weight, mlp.up_proj.weight))
            ln1, ln2 = blk.input_layernorm, blk.post_attention_layernorm
            assert isinstance(ln1, RMSNorm) and isinstance(ln2, RMSNorm)
            mats = [wq, wk, wv, at.o_proj.weight, wg, wu, mlp.down_proj.weight]
            if not all(w.is_contiguous() for w in mats):
                raise ValueError("the Triton decoder needs contiguous weight matrices")
            self.layers.append([w.detach() for w in
                                (ln1.weight, wq, wk, wv, at.o_proj.weight, ln2.weight, wg, wu,
                                 mlp.down_proj.weight)])
        self.embed = model.model.embed_tokens.weight.detach()
        self.final_norm = model.model.norm.weight.detach()
        self.head = model.lm_head.weight.detach()
        self.eps = float(cfg.norm_eps)
        self.cos, self.sin = (t.contiguous() for t in rope_cos_sin(
            torch.arange(cfg.max_seq_len, device=dev), self.hd, cfg.rope_theta, dt))
        self.h = torch.zeros(self.d, device=dev, dtype=dt)  # the residual stream
        self.q = torch.zeros(self.nh * self.hd, device=dev, dtype=dt)
        self.att = torch.zeros(self.nh * self.hd, device=dev, dtype=dt)
        self.act = torch.zeros(cfg.d_ff, device=dev, dtype=dt)
        self.logits = torch.zeros(1, cfg.vocab_size, device=dev, dtype=dt)
        self.scale = self.hd ** -0.5

    def _step(self) -> torch.Tensor:
        t, d, dp, hd = self.t, self.d, _pow2(self.d), self.hd
        k0 = self.cache.k[0]
        c_sh, c_st, w = k0.stride(1), k0.stride(2), t.warps
        _embed[(1,)](self.x, self.embed, self.h, D=d, DP=dp)
        for i, (g1, wq, wk, wv, wo, g2, wg, wu, wd) in enumerate(self.layers):
            kc, vc = self.cache.k[i], self.cache.v[i]
            _qkv_rope_store[(self.nh + 2 * self.nkv, t.split)](
                self.h, g1, wq, wk, wv, self.cos, self.sin, self.pos, self.slot, self.q, kc, vc,
                c_sh, c_st, self.eps, D=d, DP=dp, HD=hd, NH=self.nh, NKV=self.nkv,
                SPLIT=t.split, BK=t.k, num_warps=w)
            _attend[(self.nh,)](self.q, kc, vc, self.slot, self.att, c_sh, c_st, self.scale,
                                HD=hd, REP=self.nh // self.nkv, BT=t.keys, num_warps=w)
            _gemv_add[(d // t.rows,)](self.att, wo, self.h, K=self.nh * hd, BN=t.rows, BK=t.k,
                                      num_warps=w)
            _gate_up_silu[(wg.shape[0] // t.rows,)](self.h, g2, wg, wu, self.act, self.eps,
                                                    D=d, DP=dp, BN=t.rows, BK=t.k, num_warps=w)
            _gemv_add[(d // t.rows_down,)](self.act, wd, self.h, K=wd.shape[1], BN=t.rows_down,
                                           BK=t.k_down, num_warps=w)
        v = self.head.shape[0]
        _norm_head[(triton.cdiv(v, t.rows_head),)](
            self.h, self.final_norm, self.head, self.logits, self.eps, v, D=d, DP=dp,
            BN=t.rows_head, BK=t.k, num_warps=w)
        return self.logits
