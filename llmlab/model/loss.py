"""Next-token cross-entropy fused with the output projection.

    loss = -1/n * sum_i log softmax(h_i W^T)[y_i]         (n = rows whose label is not ignored)
    dloss/dlogits_i = (softmax(h_i W^T) - onehot(y_i)) / n

The unfused path writes the (N, vocab) logits, then a log-softmax copy, then a zero-filled
one-hot gradient, then the log-softmax gradient: four N x vocab buffers and two exp passes.
For a small model the vocabulary projection is most of the activations, so that traffic is a
large share of the step. Here the rows go through in chunks that stay in cache: each chunk's
logits become probabilities (one exp per logit), and the gradients of h and W are formed
while the chunk is hot. Backward only scales them by the incoming gradient. The
arithmetic is the same matmuls and the same softmax; only the memory traffic changes.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from llmlab.model.linear import linear, mm_nt, use_onednn

IGNORE_INDEX = -100

# Logit elements per chunk: 1M fp32 (4 MiB) stays in a CPU core's L2/L3; GPUs take wider rows.
_CHUNK_ELEMS = {"cpu": 1 << 20}
_GPU_CHUNK_ELEMS = 1 << 26


def rows_per_chunk(device_type: str, vocab: int, n: int) -> int:
    """Rows of the logits formed at a time (also used by the trainer's memory estimate)."""
    elems = _CHUNK_ELEMS.get(device_type, _GPU_CHUNK_ELEMS)
    return max(1, min(n, max(64, elems // vocab)))


def _chunks(h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, ignore_index: int,
            grads: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Summed loss over kept rows and, if `grads`, the unscaled gradients of h and W (fp32 W)."""
    n, vocab = h.shape[0], w.shape[0]
    rows = rows_per_chunk(h.device.type, vocab, n)
    fast = use_onednn(h, w)  # fp32 on CPU: the three products in oneDNN (model/linear.py)
    keep = labels != ignore_index
    target = torch.where(keep, labels, 0)
    any_ignored = bool((~keep).any()) if grads else False
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    gh = torch.empty_like(h) if grads else None
    gw = None
    if grads:  # oneDNN forms W's gradient transposed, (d, vocab), and fastest so
        shape = (w.shape[1], vocab) if fast else w.shape
        gw = torch.zeros(shape, dtype=torch.float32, device=w.device)
    buf = None if fast else torch.empty(rows, vocab, dtype=h.dtype, device=h.device)
    wt = w.t()
    for s in range(0, n, rows):
        e = min(n, s + rows)
        hc, tc, kc = h[s:e], target[s:e, None], keep[s:e]
        logits = mm_nt(hc, w) if fast else torch.mm(hc, wt, out=buf[: e - s])  # type: ignore
        logits = logits.float()
        # softmax takes one exp per logit (log_softmax, then exp for the gradient, takes two);
        # -log p[y] is the loss except where p[y] underflows fp32, where lse - logit[y] is used.
        p = torch.softmax(logits, -1)
        p_y = p.gather(1, tc).squeeze(1)
        row = -p_y.log()
        tiny = p_y < torch.finfo(torch.float32).tiny
        if h.device.type != "cpu" or bool(tiny.any()):  # (a sync on CPU costs nothing)
            exact = torch.logsumexp(logits, -1) - logits.gather(1, tc).squeeze(1)
            row = torch.where(tiny, exact, row)
        total += row.masked_fill(~kc, 0.0).sum()
        if gh is None or gw is None:
            continue
        g = p.scatter_add_(1, tc, p.new_full(tc.shape, -1.0))  # softmax - onehot
        if any_ignored:
            g.masked_fill_(~kc[:, None], 0.0)
        g = g.to(h.dtype)
        if fast:
            gh[s:e] = mm_nt(g, wt)
            gw += mm_nt(hc.t().contiguous(), g.t())
        else:
            torch.mm(g, w, out=gh[s:e])
            if gw.dtype == h.dtype:
                gw.addmm_(g.t(), hc)
            else:
                gw += (g.t() @ hc).float()
    if fast and gw is not None:
        gw = gw.t().contiguous()
    return total, gh, gw


@torch.library.custom_op("llmlab::linear_ce", mutates_args=())
def _chunks_op(h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, ignore_index: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # `_chunks` as one opaque op, so torch.compile keeps the chunk loop (and its data-dependent
    # checks) whole instead of breaking the graph around it.
    total, gh, gw = _chunks(h, w, labels, ignore_index, grads=True)
    return total, gh, gw  # type: ignore[return-value]


@_chunks_op.register_fake
def _(h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, ignore_index: int
      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (h.new_empty((), dtype=torch.float32), torch.empty_like(h),
            w.new_empty(w.shape, dtype=torch.float32))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor,  # noqa: ANN001
                ignore_index: int, dt: torch.dtype) -> torch.Tensor:
        run = _chunks_op if torch.compiler.is_compiling() else _chunks
        total, gh, gw = run(h.to(dt), w.to(dt), labels, ignore_index)
        count = (labels != ignore_index).sum()
        ctx.save_for_backward(gh, gw, count)
        ctx.dtypes = h.dtype, w.dtype
        return total / count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        gh, gw, count = ctx.saved_tensors
        scale = grad.float() / count
        dh, dw = ctx.dtypes
        return (gh * scale.to(gh.dtype)).to(dh), (gw * scale).to(dw), None, None, None


def kept_rows(h: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of h (..., d) and labels (...) whose label is kept, so that the output
    projection, the largest matmul of a small model, skips the others: SFT trains a few per
    cent of a row's tokens (the assistant's). The mean loss over them is the same number.
    Compiled, every row stays: a data-dependent shape would split the graph."""
    if torch.compiler.is_compiling():
        return h, labels
    keep = labels != ignore_index
    if bool(keep.all()):
        return h, labels
    return h[keep], labels[keep]


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean of `F.cross_entropy(h @ weight.T, labels, ignore_index=...)` over kept labels,
    computed in fp32, without materialising the logits (see the module docstring).

    h: (..., d) hidden states; weight: (vocab, d); labels: (...) token ids. Under autocast the
    matmuls run in the autocast dtype, as `nn.Linear` would; the softmax is always fp32."""
    h2, y = h.reshape(-1, h.shape[-1]), labels.reshape(-1)
    grads = torch.is_grad_enabled() and (h2.requires_grad or weight.requires_grad)
    if torch.compiler.is_compiling() and not (grads and h.device.type == "cpu"):
        # Compiled on a GPU (or without gradients), the plain form: inductor fuses the softmax
        # and the loss itself, and a GPU has the memory for the logits.
        logits = linear(h2, weight).float()
        return torch.nn.functional.cross_entropy(logits, y, ignore_index=ignore_index)
    dt = h2.dtype
    if torch.is_autocast_enabled(h.device.type):
        dt = torch.get_autocast_dtype(h.device.type)
    with torch.autocast(h.device.type, enabled=False):
        if grads:
            return _LinearCrossEntropy.apply(h2, weight, y, ignore_index, dt)
        total, _, _ = _chunks(h2.to(dt), weight.to(dt), y, ignore_index, grads=False)
        return total / (y != ignore_index).sum()


class _LinearTokenLogprobs(torch.autograd.Function):
    """log softmax(h W^T / T)[y] per row, in chunks of rows: neither the (N, vocab) logits
    nor their softmax are kept. Backward recomputes each chunk's logits from h and W:
      d h = (g / T) (w_y - p W),   d W = sum_rows (g / T) (onehot_y - p)^T h."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, y: torch.Tensor,  # noqa: ANN001
                temperature: float, dt: torch.dtype) -> torch.Tensor:
        n, vocab = h.shape[0], w.shape[0]
        rows = rows_per_chunk(h.device.type, vocab, n)
        hd, wd = h.to(dt), w.to(dt)
        acc = torch.promote_types(dt, torch.float32)  # the softmax: fp32, or fp64 in fp64
        out = torch.empty(n, dtype=acc, device=h.device)
        lse = torch.empty(n, dtype=acc, device=h.device)
        for s in range(0, n, rows):
            z = (hd[s:s + rows] @ wd.t()).to(acc).div_(temperature)
            lse[s:s + rows] = torch.logsumexp(z, -1)
            out[s:s + rows] = z.gather(1, y[s:s + rows, None]).squeeze(1) - lse[s:s + rows]
        ctx.save_for_backward(h, w, y, lse)
        ctx.temperature, ctx.dt = temperature, dt
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):  # noqa: ANN001, ANN205
        h, w, y, lse = ctx.saved_tensors
        t, dt = ctx.temperature, ctx.dt
        n, vocab = h.shape[0], w.shape[0]
        rows = rows_per_chunk(h.device.type, vocab, n)
        hd, wd = h.to(dt), w.to(dt)
        gh = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        gw = torch.zeros(w.shape, dtype=lse.dtype, device=w.device) \
            if ctx.needs_input_grad[1] else None
        for s in range(0, n, rows):
            z = (hd[s:s + rows] @ wd.t()).to(lse.dtype).div_(t)
            p = torch.exp(z - lse[s:s + rows, None])
            # (onehot - p) * g / T, formed in place over the chunk's probabilities
            gz = p.neg_().scatter_add_(1, y[s:s + rows, None],
                                       p.new_ones(p.shape[0], 1)).mul_((g[s:s + rows] / t)[:, None])
            gz = gz.to(dt)
            if gh is not None:
                gh[s:s + rows] = (gz @ wd).to(h.dtype)
            if gw is not None:
                gw += (gz.t() @ hd[s:s + rows]).to(gw.dtype)
        return gh, None if gw is None else gw.to(w.dtype), None, None, None


def linear_token_logprobs(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          temperature: float = 1.0) -> torch.Tensor:
    """log softmax(h @ weight.T / temperature)[targets] for every row, fp32 (fp64 for fp64
    inputs), shape of
    `targets`: the per-token log-probabilities RL losses need, without the (..., vocab) logits
    and log-softmax an RL batch would otherwise hold (GBs for a 49k vocabulary). Under
    autocast the products run in the autocast dtype, as `nn.Linear` would."""
    dev = h.device.type
    dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
    with torch.autocast(dev, enabled=False):
        out = _LinearTokenLogprobs.apply(h.reshape(-1, h.shape[-1]), weight,
                                         targets.reshape(-1), float(temperature), dt)
    return out.view(targets.shape)
