"""fp32 matmul speed on this CPU: torch's default (MKL, via F.linear / mm) vs oneDNN (via
llmlab.model.linear), on the products of one tiny-cpu training step.

For each shape the forward product x @ W.T, the input gradient g @ W and the weight gradient
g.T @ x are timed both ways, in turns, and reported as GFLOP/s from the fastest of the
repetitions: on a shared box a millisecond-long call is often interrupted, and interruptions
only add time, so the minimum is the kernel's speed. The results are checked to agree.
Run with MKL_VERBOSE=1 to see which code path MKL takes.

    PYTHONPATH=. python benchmarks/cpu_gemm.py [--threads 1] [--reps 31]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import emit, print_machine, stopwatch

from llmlab.model.linear import enabled, mm_nt, weight_grad

# (rows, in, out) of the tiny-cpu step (16 x 128 tokens, d=128, d_ff=384) and a loss chunk.
SHAPES = [(2048, 128, 128), (2048, 128, 384), (2048, 384, 128), (256, 128, 4096)]


def _products(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor
              ) -> dict[str, tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]]:
    return {
        "forward x W^T": (lambda: F.linear(x, w), lambda: mm_nt(x, w)),
        "input grad g W": (lambda: g @ w, lambda: mm_nt(g, w.t())),
        "weight grad g^T x": (lambda: g.t() @ x, lambda: weight_grad(g, x)),
    }


def _time(fn: Callable[[], torch.Tensor], times: list[float]) -> None:
    t0 = stopwatch()
    fn()
    times.append(t0())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=31)
    a = ap.parse_args()
    print_machine(threads=a.threads)
    assert enabled(), "oneDNN's _linear_pointwise is not available in this torch build"
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} thread(s); GFLOP/s, best of {a.reps}")
    print("| rows x in -> out | product | MKL (torch default) | oneDNN | oneDNN / MKL |")
    print("|---|---|---|---|---|")
    g0 = torch.Generator().manual_seed(0)
    rows = []
    for n, d_in, d_out in SHAPES:
        x, w = torch.randn(n, d_in, generator=g0), torch.randn(d_out, d_in, generator=g0)
        g = torch.randn(n, d_out, generator=g0)
        for name, (mkl, dnn) in _products(x, w, g).items():
            torch.testing.assert_close(dnn(), mkl(), atol=1e-3, rtol=1e-4)
            tm: list[float] = []
            td: list[float] = []
            for _ in range(a.reps):
                _time(mkl, tm)
                _time(dnn, td)
            flop = 2 * n * d_in * d_out
            fm, fd = flop / min(tm) / 1e9, flop / min(td) / 1e9
            print(f"| {n} x {d_in} -> {d_out} | {name} | {fm:.0f} | {fd:.0f} | {fd / fm:.1f}x |")
            rows.append({"shape": [n, d_in, d_out], "product": name, "mkl_gflops": fm,
                         "onednn_gflops": fd})
    emit({"threads": a.threads, "reps": a.reps, "products": rows})


if __name__ == "__main__":
    main()
