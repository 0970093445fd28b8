"""Training step time on the tiny-cpu shape: llmlab vs transformers' GPT2LMHeadModel.

Same shape (d_model, layers, heads, vocab, context), same batch, same thread count, one
process; the variants take turns round by round so machine noise hits them alike. A step is
forward + next-token loss + backward + AdamW update (each side with its usual optimizer setup:
ours fused AdamW as the Trainer builds it, transformers' with torch's default AdamW as HF
Trainer's adamw_torch). Reports the median step time and the ratio to transformers.

    PYTHONPATH=. python benchmarks/pretrain_cpu.py [--threads 2] [--rounds 5] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from llmlab.model import ModelConfig, Transformer
from llmlab.train.optim import make_adamw, param_groups
from llmlab.train.presets import PRESETS
from llmlab.train.pretrain import next_token_loss

Step = Callable[[], None]


def _autocast(bf16: bool) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def ours(cfg: ModelConfig, x: torch.Tensor, compile_: bool, bf16: bool = False) -> Step:
    torch.manual_seed(0)
    model = Transformer(cfg)
    opt = make_adamw(param_groups(model, 0.1), 1e-3, (0.9, 0.95), 1e-8, torch.device("cpu"))
    fwd = torch.compile(model) if compile_ else model
    batch = {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    def step() -> None:
        with _autocast(bf16):
            loss, _ = next_token_loss(fwd, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def hf(cfg: ModelConfig, x: torch.Tensor, compile_: bool, bf16: bool = False) -> Step:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hc = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model,
                    n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.d_ff,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(hc)
    model.config._attn_implementation = "sdpa"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    fwd = torch.compile(model) if compile_ else model
    inp = x[:, :-1].contiguous()

    def step() -> None:
        with _autocast(bf16):
            loss = fwd(inp, labels=inp).loss  # HF shifts labels inside
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile variants")
    ap.add_argument("--bf16", action="store_true",
                    help="also time bf16 autocast (--precision bf16; needs avx512_bf16/AMX)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    p = PRESETS["tiny-cpu"]
    m, t = p["model"], p["train"]
    shape = dict(vocab_size=4096, d_model=m["d_model"], n_layer=m["n_layer"],
                 n_head=m["n_head"], max_seq_len=m["max_seq_len"])
    gpt2 = ModelConfig(**shape, d_ff=4 * m["d_model"])  # GPT-2 architecture, tiny-cpu shape
    tiny = ModelConfig(vocab_size=4096, **m)  # the preset as trained (RoPE, RMSNorm, SwiGLU)
    x = torch.randint(0, 4096, (t["batch_size"], t["seq_len"] + 1),
                      generator=torch.Generator().manual_seed(0))
    variants: dict[str, Step] = {
        "transformers GPT2LMHeadModel": hf(gpt2, x, False),
        "llmlab, GPT-2 architecture": ours(gpt2, x, False),
        "llmlab, tiny-cpu preset": ours(tiny, x, False),
    }
    if a.compile:
        variants["transformers GPT2LMHeadModel, compiled"] = hf(gpt2, x, True)
        variants["llmlab, GPT-2 architecture, compiled"] = ours(gpt2, x, True)
    if a.bf16:
        variants["transformers GPT2LMHeadModel, bf16 autocast"] = hf(gpt2, x, False, True)
        variants["llmlab, GPT-2 architecture, bf16 autocast"] = ours(gpt2, x, False, True)
    for step in variants.values():  # warm-up (and compile)
        for _ in range(2):
            step()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for name, step in variants.items():
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step()
            times[name].append((time.perf_counter() - t0) / a.steps)
    base = statistics.median(times["transformers GPT2LMHeadModel"])
    tokens = t["batch_size"] * t["seq_len"]
    print(f"tiny-cpu shape d={m['d_model']} L={m['n_layer']} H={m['n_head']} V=4096, batch "
          f"{t['batch_size']}x{t['seq_len']}, {a.threads} threads, torch {torch.__version__}")
    print("| variant | step ms (median) | tok/s | speed vs transformers |\n|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med * 1e3:.1f} | {tokens / med:,.0f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
