"""GPU training throughput on the GPT-2-124M shape: llmlab vs transformers, both compiled.

bf16 autocast, torch.compile, B x T = 16 x 1024 (>= the brief's floor), fused AdamW for both,
one GPU. Prints tokens/s and MFU = 6 * N * tokens/s / peak, with the peak taken from
llmlab.train.report.GPU_PEAK_BF16 by device name (H100/H200 SXM: 989 TFLOP/s dense bf16) or
--peak-flops. Needs CUDA; exits with a message otherwise.

    PYTHONPATH=. python benchmarks/pretrain_gpu.py [--batch 16] [--seq 1024] [--steps 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

from llmlab.model import ModelConfig, Transformer, preset
from llmlab.train.optim import param_groups
from llmlab.train.pretrain import next_token_loss
from llmlab.train.report import peak_flops


def ours(cfg: ModelConfig, x: torch.Tensor) -> tuple[Callable[[], None], int]:
    model = Transformer(cfg).cuda()
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=6e-4, fused=True)
    fwd = torch.compile(model)
    batch = {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = next_token_loss(fwd, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model.num_params()


def hf(cfg: ModelConfig, x: torch.Tensor) -> tuple[Callable[[], None], int]:
    from transformers import GPT2Config, GPT2LMHeadModel

    hc = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model,
                    n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                    attn_pdrop=0.0, attn_implementation="sdpa")
    model = GPT2LMHeadModel(hc).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, fused=True)
    fwd = torch.compile(model)
    inp = x[:, :-1].contiguous()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(inp, labels=inp).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model.num_parameters()


def timed(step: Callable[[], None], warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--peak-flops", type=float, default=None)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("pretrain_gpu.py needs a CUDA GPU; none found", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = preset("gpt2", max_seq_len=a.seq)
    x = torch.randint(0, cfg.vocab_size, (a.batch, a.seq + 1), device="cuda")
    name = torch.cuda.get_device_name()
    peak, note = (a.peak_flops, "given") if a.peak_flops else peak_flops(name)
    tokens = a.batch * a.seq
    print(f"{name}; GPT-2 124M shape, {a.batch}x{a.seq}, bf16 autocast, compiled; peak {note}")
    print("| variant | step ms | tok/s | MFU |\n|---|---|---|---|")
    rows = {}
    for label, build in (("transformers GPT2LMHeadModel", hf), ("llmlab", ours)):
        step, n = build(cfg, x)
        dt = timed(step, a.warmup, a.steps)
        rows[label] = dt
        print(f"| {label} | {dt * 1e3:.1f} | {tokens / dt:,.0f} | "
              f"{100 * 6 * n * tokens / dt / peak:.1f}% |")
        del step
        torch.cuda.empty_cache()
    ratio = rows["transformers GPT2LMHeadModel"] / rows["llmlab"]
    print(f"llmlab speed vs transformers: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
