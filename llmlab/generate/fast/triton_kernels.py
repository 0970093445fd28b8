"""The kernels of batch-1 Triton decoding: five per layer, replayed as one CUDA graph.

A decode step of a small model at batch 1 is bound by kernel launches, not by bytes: the
compiled PyTorch step issues about 340 kernels per token for SmolLM2-135M (cuBLAS GEMVs
of ~4 us each, norms, RoPE, cache writes, attention, residual adds). Here each layer is:

1. RMSNorm -> fused Q/K/V GEMV -> RoPE on q and k -> k and v written into the cache;
2. attention of the one query over the cache (online softmax, grouped KV heads);
3. output-projection GEMV + residual add;
4. RMSNorm -> gate and up GEMVs -> SiLU(gate) * up;
5. down-projection GEMV + residual add;

plus an embedding gather and the final RMSNorm + LM head: 5L + 2 launches (152 for 30
layers). `Tiles(fuse=...)` fuses further: 1 makes the whole MLP (4 and 5) one kernel, and 3
also attention with the output projection (2 and 3), for three kernels per layer (3L + 2,
92 launches). A fused kernel adds its projection's partial sums into an fp32 residual with
atomics, so no kernel has to wait for a whole GEMV before the add.
Every kernel reads its inputs from fixed buffers and the position from a device tensor, so
`StaticDecoder`'s graph capture works unchanged.

Numerics follow the PyTorch model: products accumulate in fp32, and values are rounded to
the model dtype where the model rounds them (projection outputs, norms, residual adds). The
fused form keeps the residual and the o_proj and down outputs in fp32 instead, which in bf16
is closer to exact than the model, and its atomic sums are not bitwise reproducible.
Prefill still runs the model's own forward and fills the same `KVCache`.

Without a GPU the kernels run in Triton's interpreter (`TRITON_INTERPRET=1`), which is how
the tests compare them with the model on the CPU.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def _scalar(ptr):
    return tl.max(tl.load(ptr + tl.arange(0, 1)), axis=0)


@triton.jit
def _wait(PDL: tl.constexpr):
    # With programmatic dependent launch a kernel starts while the one before it finishes:
    # everything before this line (weight loads) overlaps that tail. Reads of the previous
    # kernel's outputs, and every write, come after it.
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def _residual(x_ptr, z_ptr, D: tl.constexpr, KP: tl.constexpr, FUSE: tl.constexpr):
    # The residual stream in fp32. Fused, it is held as two fp32 buffers, x + z, because the
    # MLP kernel adds its down projection into z with atomics while x is still being read.
    kk = tl.arange(0, KP)
    km = kk < D
    x = tl.load(x_ptr + kk, mask=km, other=0.0).to(tl.float32)
    if FUSE:
        x += tl.load(z_ptr + kk, mask=km, other=0.0)
    return x


@triton.jit
def _normed(xf, g_ptr, eps, D: tl.constexpr, KP: tl.constexpr):
    # The model's RMSNorm of the whole (fp32) vector xf: normalise, round to the model dtype,
    # scale by g (rounded again), as RMSNorm.forward does.
    kk = tl.arange(0, KP)
    g = tl.load(g_ptr + kk, mask=kk < D, other=0.0)
    inv = tl.rsqrt(tl.sum(xf * xf, axis=0) / D + eps)
    xn = (xf * inv).to(g.dtype)
    return (xn.to(tl.float32) * g.to(tl.float32)).to(g.dtype).to(tl.float32)


@triton.jit
def _rows(w_ptr, rows, K: tl.constexpr, KP: tl.constexpr):
    # A (rows, K) tile of a row-major matrix in one load: at batch 1 a GEMV is bound by the
    # latency of its loads, so each program makes one round trip, not one per K chunk.
    kk = tl.arange(0, KP)
    return tl.load(w_ptr + rows[:, None] * K + kk[None, :], mask=(kk < K)[None, :], other=0.0)


@triton.jit
def _embed(ids_ptr, table_ptr, out_ptr, z_ptr, D: tl.constexpr, DP: tl.constexpr,
           FUSE: tl.constexpr, PDL: tl.constexpr):
    _wait(PDL)
    offs = tl.arange(0, DP)
    tok = _scalar(ids_ptr)
    row = tl.load(table_ptr + tok * D + offs, mask=offs < D)
    tl.store(out_ptr + offs, row, mask=offs < D)
    if FUSE:
        tl.store(z_ptr + offs, tl.zeros([DP], tl.float32), mask=offs < D)


@triton.jit
def _qkv_rope_store(x_ptr, z_ptr, out_ptr, g_ptr, wq_ptr, wk_ptr, wv_ptr, cos_ptr, sin_ptr,
                    pos_ptr, slot_ptr, q_ptr, kc_ptr, vc_ptr, c_sh, c_st, eps,
                    D: tl.constexpr, DP: tl.constexpr, HD: tl.constexpr,
                    NH: tl.constexpr, NKV: tl.constexpr, SPLIT: tl.constexpr,
                    FUSE: tl.constexpr, PDL: tl.constexpr):
    # Program (head, part): rows r and r + HD/2 of one head, so RoPE's pairs stay together.
    # Fused, the residual is x + z, and program (0, 0) writes that sum to out, the buffer the
    # next two kernels add into (x and z are still being read by the other programs).
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
    wa = _rows(w_ptr, r, D, DP)
    wb = _rows(w_ptr, r + HD // 2, D, DP)
    _wait(PDL)
    xf = _residual(x_ptr, z_ptr, D, DP, FUSE)
    xn = _normed(xf, g_ptr, eps, D, DP)[None, :]
    if FUSE:  # noqa: SIM102 (a constexpr test, pruned at compile time, around a runtime one)
        if head + part == 0:
            kk = tl.arange(0, DP)
            tl.store(out_ptr + kk, xf, mask=kk < D)
    dt = q_ptr.dtype.element_ty
    a = tl.sum(wa.to(tl.float32) * xn, axis=1).to(dt).to(tl.float32)  # in the model dtype
    b = tl.sum(wb.to(tl.float32) * xn, axis=1).to(dt).to(tl.float32)
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
def _attend_head(q_ptr, kc_ptr, vc_ptr, slot_ptr, c_sh, c_st, scale, h, sp,
                 HD: tl.constexpr, REP: tl.constexpr, BT: tl.constexpr, S: tl.constexpr):
    # Query head h over every S-th block of cache slots 0..slot (from block sp), with the
    # online softmax of FlashAttention: the running max, sum and weighted values.
    kvh = h // REP
    d = tl.arange(0, HD)
    q = tl.load(q_ptr + h * HD + d).to(tl.float32)
    n = _scalar(slot_ptr) + 1
    m_i = tl.max(tl.full([BT], float("-inf"), tl.float32), axis=0)
    l_i = tl.sum(tl.zeros([BT], tl.float32), axis=0)
    acc = tl.zeros([HD], dtype=tl.float32)
    t0 = n * 0 + sp * BT
    while t0 < n:  # a while loop: the interpreter can't take a tensor as range()'s bound
        t = t0 + tl.arange(0, BT)
        tm = t < n
        off = kvh * c_sh + t[:, None] * c_st + d[None, :]
        k = tl.load(kc_ptr + off, mask=tm[:, None], other=0.0).to(tl.float32)
        v = tl.load(vc_ptr + off, mask=tm[:, None], other=0.0).to(tl.float32)
        s = tl.sum(k * q[None, :], axis=1) * scale
        s = tl.where(tm, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=0))
        p = tl.exp(s - m_new)
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        m_i = m_new
        t0 += S * BT
    return m_i, l_i, acc


@triton.jit
def _attend(q_ptr, kc_ptr, vc_ptr, slot_ptr, pm_ptr, pl_ptr, pacc_ptr, c_sh, c_st, scale,
            HD: tl.constexpr, REP: tl.constexpr, BT: tl.constexpr, S: tl.constexpr,
            PDL: tl.constexpr):
    # Program (head, split). Its partial (max, sum, weighted values) is combined with the
    # other splits' in _attn_out_add (flash-decoding): a head alone is too little work for
    # one program once the context is long.
    _wait(PDL)
    h = tl.program_id(0)
    sp = tl.program_id(1)
    m_i, l_i, acc = _attend_head(q_ptr, kc_ptr, vc_ptr, slot_ptr, c_sh, c_st, scale, h, sp,
                                 HD, REP, BT, S)
    d = tl.arange(0, HD)
    one = tl.arange(0, 1)
    tl.store(pm_ptr + (sp + h * S) + one * 0, m_i + one * 0.0)
    tl.store(pl_ptr + (sp + h * S) + one * 0, l_i + one * 0.0)
    tl.store(pacc_ptr + (sp + h * S) * HD + d, acc)


@triton.jit
def _attn_out_add(pm_ptr, pl_ptr, pacc_ptr, w_ptr, res_ptr, z_ptr, K: tl.constexpr,
                  KP: tl.constexpr, HD: tl.constexpr, S: tl.constexpr, BN: tl.constexpr,
                  FUSE: tl.constexpr, PDL: tl.constexpr):
    # res[rows] += Wo[rows] @ attention output, where the output is first put together from
    # the S splits of each head: sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s. With the
    # MLP fused, res is fp32, and each program clears its rows of z, which that kernel adds
    # into next.
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    w = _rows(w_ptr, rows, K, KP)
    _wait(PDL)
    kk = tl.arange(0, KP)
    km = kk < K
    sp = tl.arange(0, S)
    part = (kk // HD)[None, :] * S + sp[:, None]  # (S, KP): which partial each lane reads
    m = tl.load(pm_ptr + part, mask=km[None, :], other=float("-inf"))
    big = tl.max(m, axis=0)
    wt = tl.where(km[None, :], tl.exp(m - big[None, :]), 0.0)
    den = tl.sum(wt * tl.load(pl_ptr + part, mask=km[None, :], other=0.0), axis=0)
    num = tl.sum(wt * tl.load(pacc_ptr + part * HD + (kk % HD)[None, :], mask=km[None, :],
                              other=0.0), axis=0)
    dt = res_ptr.dtype.element_ty
    a = tl.where(km, num / tl.where(km, den, 1.0), 0.0).to(dt).to(tl.float32)
    acc = tl.sum(w.to(tl.float32) * a[None, :], axis=1)
    res = tl.load(res_ptr + rows).to(tl.float32)
    tl.store(res_ptr + rows, (res + acc.to(dt).to(tl.float32)).to(dt))
    if FUSE:
        tl.store(z_ptr + rows, tl.zeros([BN], tl.float32))


@triton.jit
def _gemv_add(a_ptr, w_ptr, res_ptr, K: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr,
              PDL: tl.constexpr):
    # res[rows] += W[rows] @ a, rounding W @ a to the model dtype first as the model does.
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    w = _rows(w_ptr, rows, K, KP)
    _wait(PDL)
    kk = tl.arange(0, KP)
    a = tl.load(a_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
    acc = tl.sum(w.to(tl.float32) * a[None, :], axis=1)
    dt = res_ptr.dtype.element_ty
    res = tl.load(res_ptr + rows).to(tl.float32)
    tl.store(res_ptr + rows, (res + acc.to(dt).to(tl.float32)).to(dt))


@triton.jit
def _attend_out(q_ptr, kc_ptr, vc_ptr, slot_ptr, w_ptr, res_ptr, z_ptr, c_sh, c_st, scale,
                K: tl.constexpr, D: tl.constexpr, HD: tl.constexpr, REP: tl.constexpr,
                BT: tl.constexpr, BO: tl.constexpr, PDL: tl.constexpr):
    # Fused attention + output projection. Program (head, chunk) attends with one head, then
    # adds Wo[chunk rows, head columns] @ its output into the residual with atomics: the
    # projection is a sum over heads, so no program needs another's output. Each of a head's
    # chunks recomputes its attention (cheap next to a launch at short contexts). Head 0's
    # programs also clear their rows of z, which the MLP kernel adds into next.
    h = tl.program_id(0)
    c = tl.program_id(1)
    rows = c * BO + tl.arange(0, BO)
    rm = rows < D
    d = tl.arange(0, HD)
    w = tl.load(w_ptr + rows[:, None] * K + h * HD + d[None, :], mask=rm[:, None], other=0.0)
    _wait(PDL)
    m_i, l_i, acc = _attend_head(q_ptr, kc_ptr, vc_ptr, slot_ptr, c_sh, c_st, scale, h, 0,
                                 HD, REP, BT, 1)
    a = (acc / l_i).to(w_ptr.dtype.element_ty).to(tl.float32)  # the model's rounding
    tl.atomic_add(res_ptr + rows, tl.sum(w.to(tl.float32) * a[None, :], axis=1), mask=rm,
                  sem="relaxed")
    if h == 0:
        tl.store(z_ptr + rows, tl.zeros([BO], tl.float32), mask=rm)


@triton.jit
def _swiglu(xn, wg, wu, dt: tl.constexpr):
    # SiLU(gate) * up for a tile of rows, rounded to the model dtype where the model rounds.
    gt = tl.sum(wg.to(tl.float32) * xn, axis=1).to(dt).to(tl.float32)
    up = tl.sum(wu.to(tl.float32) * xn, axis=1).to(dt).to(tl.float32)
    silu = (gt / (1.0 + tl.exp(-gt))).to(dt).to(tl.float32)
    return (silu * up).to(dt)


@triton.jit
def _gate_up_silu(x_ptr, g_ptr, wg_ptr, wu_ptr, out_ptr, eps,
                  D: tl.constexpr, DP: tl.constexpr, BN: tl.constexpr, PDL: tl.constexpr):
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    wg = _rows(wg_ptr, rows, D, DP)
    wu = _rows(wu_ptr, rows, D, DP)
    _wait(PDL)
    xn = _normed(_residual(x_ptr, x_ptr, D, DP, False), g_ptr, eps, D, DP)[None, :]
    tl.store(out_ptr + rows, _swiglu(xn, wg, wu, out_ptr.dtype.element_ty))


@triton.jit
def _mlp_down(x_ptr, g_ptr, wg_ptr, wu_ptr, wd_ptr, z_ptr, eps, D: tl.constexpr,
              DP: tl.constexpr, F: tl.constexpr, BN: tl.constexpr, PDL: tl.constexpr):
    # Fused MLP: program j computes BN of the d_ff activations, then adds their share of the
    # down projection, Wd[:, those columns] @ act, into z with atomics (the projection is a
    # sum over columns). x, the residual after attention, is only read here.
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    wg = _rows(wg_ptr, rows, D, DP)
    wu = _rows(wu_ptr, rows, D, DP)
    kk = tl.arange(0, DP)
    km = kk < D
    wd = tl.load(wd_ptr + kk[:, None] * F + rows[None, :], mask=km[:, None], other=0.0)
    _wait(PDL)
    xn = _normed(_residual(x_ptr, x_ptr, D, DP, False), g_ptr, eps, D, DP)[None, :]
    act = _swiglu(xn, wg, wu, wg_ptr.dtype.element_ty).to(tl.float32)
    tl.atomic_add(z_ptr + kk, tl.sum(wd.to(tl.float32) * act[None, :], axis=1), mask=km,
                  sem="relaxed")


@triton.jit
def _norm_head(x_ptr, z_ptr, g_ptr, w_ptr, out_ptr, pmax_ptr, pidx_ptr, eps, V,
               D: tl.constexpr, DP: tl.constexpr, BN: tl.constexpr, ARGMAX: tl.constexpr,
               FUSE: tl.constexpr, PDL: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BN + tl.arange(0, BN)
    rm = rows < V
    kk = tl.arange(0, DP)
    w = tl.load(w_ptr + rows[:, None] * D + kk[None, :], mask=rm[:, None] & (kk < D)[None, :],
                other=0.0)
    _wait(PDL)
    xn = _normed(_residual(x_ptr, z_ptr, D, DP, FUSE), g_ptr, eps, D, DP)[None, :]
    # Logits in the model dtype, as the model's LM head gives them.
    logits = tl.sum(w.to(tl.float32) * xn, axis=1).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows, logits, mask=rm)
    if ARGMAX:  # this block's best (first of ties, as torch.argmax), for _pick
        z = tl.where(rm, logits.to(tl.float32), float("-inf"))
        best = tl.argmax(z, axis=0)
        tl.store(pmax_ptr + pid + tl.arange(0, 1), tl.max(z, axis=0))
        tl.store(pidx_ptr + pid + tl.arange(0, 1), pid * BN + best)


@triton.jit
def _pick(pmax_ptr, pidx_ptr, n, ids_ptr, pos_ptr, slot_ptr, toks_ptr, step_ptr,
          NP: tl.constexpr, PDL: tl.constexpr):
    # Greedy decoding inside the graph: the argmax over the head's blocks becomes the next
    # input token, is recorded in toks[step], and the position and slot move on by one. The
    # host then only replays the graph.
    _wait(PDL)
    i = tl.arange(0, NP)
    z = tl.load(pmax_ptr + i, mask=i < n, other=float("-inf"))
    j = tl.argmax(z, axis=0)
    tok = tl.sum(tl.where(i == j, tl.load(pidx_ptr + i, mask=i < n, other=0), 0), axis=0)
    one = tl.arange(0, 1)
    step = _scalar(step_ptr)
    tl.store(toks_ptr + step + one, tok + one * 0)
    tl.store(ids_ptr + one, tok + one * 0)
    tl.store(pos_ptr + one, _scalar(pos_ptr) + 1 + one * 0)
    tl.store(slot_ptr + one, _scalar(slot_ptr) + 1 + one * 0)
    tl.store(step_ptr + one, step + 1 + one * 0)
