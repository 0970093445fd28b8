"""Training step time on the tiny-cpu shape: llmlab against transformers, side by side.

Two like-for-like pairs on the same shape (d_model, layers, heads, vocab, context), batch and
thread count, in one process:

- GPT-2 architecture: transformers' GPT2LMHeadModel vs llmlab's GPT-2 config;
- the tiny-cpu preset as trained (RoPE, RMSNorm, SwiGLU, tied): LlamaForCausalLM vs llmlab.

A step is forward + next-token loss + backward + AdamW update, each side with its usual
optimizer (ours fused AdamW as the Trainer builds it; transformers' torch's default AdamW, as
HF Trainer's adamw_torch). `--compile` adds both sides compiled, `--bf16` both sides under bf16
autocast. Extra llmlab variants take out the fused loss (model/loss.py), the oneDNN matmuls
(model/linear.py) or both (= the code before them), to show what each buys.

The box may be shared, so every variant runs once per round, in turn, and each round gives
one ratio per pair (peer step time / ours, measured seconds apart); the table reports the
median step times and the median of the per-round ratios, with their range. With one thread
the process's CPU time per step is reported too: it does not count time spent descheduled.
Both sides run under the allocator setting the Trainer makes on CPU (`keep_freed_memory`).

    PYTHONPATH=. python benchmarks/pretrain_cpu.py [--threads 1] [--rounds 15] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import emit, print_machine, stopwatch

from llmlab.model import ModelConfig, Transformer
from llmlab.settings import speed, speed_override
from llmlab.train.machine import keep_freed_memory
from llmlab.train.optim import make_adamw, param_groups
from llmlab.train.presets import PRESETS
from llmlab.train.pretrain import next_token_loss

Step = Callable[[], None]
V = 4096  # the tiny-cpu preset's BPE vocabulary


def _autocast(bf16: bool) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def _unfused_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(batch["input_ids"]).logits  # the pre-fusion path: (B, T, vocab) in memory
    return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten())


def ours(cfg: ModelConfig, x: torch.Tensor, compile_: bool = False, bf16: bool = False,
         fused: bool = True, onednn: bool = True) -> Step:
    """`fused=False, onednn=False` is the code before this optimisation (llmlab 3920cab):
    nn.Linear's BLAS matmuls and logits -> F.cross_entropy."""
    torch.manual_seed(0)
    model = Transformer(cfg)
    opt = make_adamw(param_groups(model, 0.1), 1e-3, (0.9, 0.95), 1e-8, torch.device("cpu"))
    fwd = torch.compile(model) if compile_ else model
    batch = {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    def step() -> None:
        with speed_override(onednn=onednn and speed.onednn):
            with _autocast(bf16):
                loss = next_token_loss(fwd, batch)[0] if fused else _unfused_loss(fwd, batch)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def hf_model(cfg: ModelConfig) -> torch.nn.Module:
    """transformers' own class for the architecture, same shape, no dropout, SDPA."""
    if cfg.pos == "rope":
        from transformers import LlamaConfig, LlamaForCausalLM

        hc = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
                         intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layer,
                         num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
                         max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
                         rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
                         attention_bias=cfg.bias, mlp_bias=cfg.bias,
                         attn_implementation="sdpa")
        return LlamaForCausalLM(hc)
    from transformers import GPT2Config, GPT2LMHeadModel

    hc = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model,
                    n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.d_ff,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                    eos_token_id=0, attn_implementation="sdpa")
    return GPT2LMHeadModel(hc)


def hf(cfg: ModelConfig, x: torch.Tensor, compile_: bool = False, bf16: bool = False) -> Step:
    torch.manual_seed(0)
    model = hf_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    fwd = torch.compile(model) if compile_ else model
    inp = x[:, :-1].contiguous()

    def step() -> None:
        with _autocast(bf16):
            loss = fwd(inp, labels=inp).loss  # transformers shifts the labels inside
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    ap.add_argument("--compile", action="store_true", help="also both sides torch.compiled")
    ap.add_argument("--bf16", action="store_true",
                    help="also both sides under bf16 autocast (needs avx512_bf16/AMX)")
    ap.add_argument("--only", default=None, help="comma-separated pair names to run")
    a = ap.parse_args()
    print_machine(threads=a.threads)
    torch.set_num_threads(a.threads)  # one setting, for every variant
    keep_freed_memory()  # the Trainer's allocator setting on CPU, for every variant
    p = PRESETS["tiny-cpu"]
    m, t = p["model"], p["train"]
    shape = dict(vocab_size=V, d_model=m["d_model"], n_layer=m["n_layer"],
                 n_head=m["n_head"], max_seq_len=m["max_seq_len"])
    archs = {"GPT-2 architecture": ModelConfig(**shape, d_ff=4 * m["d_model"]),
             "tiny-cpu preset (Llama architecture)": ModelConfig(vocab_size=V, **m)}
    x = torch.randint(0, V, (t["batch_size"], t["seq_len"] + 1),
                      generator=torch.Generator().manual_seed(0))
    # pair name -> (peer, ours); extra llmlab-only variants are listed under their pair.
    pairs: dict[str, tuple[Step, Step]] = {}
    extras: dict[str, Step] = {}
    for arch, cfg in archs.items():
        pairs[f"{arch}, fp32"] = (hf(cfg, x), ours(cfg, x))
        extras[f"{arch}, fp32: llmlab before (BLAS matmuls, unfused loss)"] = ours(
            cfg, x, fused=False, onednn=False)
        extras[f"{arch}, fp32: llmlab, fused loss only"] = ours(cfg, x, onednn=False)
        extras[f"{arch}, fp32: llmlab, oneDNN matmuls only"] = ours(cfg, x, fused=False)
        if a.bf16:
            pairs[f"{arch}, bf16 autocast"] = (hf(cfg, x, bf16=True), ours(cfg, x, bf16=True))
        if a.compile:
            pairs[f"{arch}, fp32, compiled"] = (hf(cfg, x, True), ours(cfg, x, True))
    if a.only:
        keep = a.only.split(",")
        pairs = {k: v for k, v in pairs.items() if any(s in k for s in keep)}
        extras = {k: v for k, v in extras.items() if any(s in k for s in keep)}
    variants: dict[str, Step] = {}
    for name, (peer, mine) in pairs.items():
        variants[f"{name}: transformers"] = peer
        variants[f"{name}: llmlab"] = mine
    variants.update(extras)
    for step in variants.values():  # warm-up (and compilation)
        for _ in range(2):
            step()
    load0 = os.getloadavg()[0]
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for name, step in variants.items():
            sw, c0 = stopwatch(), time.process_time()
            for _ in range(a.steps):
                step()
            times[name].append(sw() / a.steps)
            cpu[name].append((time.process_time() - c0) / a.steps)
    load1 = os.getloadavg()[0]
    tokens = t["batch_size"] * t["seq_len"]
    print(f"tiny-cpu shape d={m['d_model']} L={m['n_layer']} H={m['n_head']} V={V}, batch "
          f"{t['batch_size']}x{t['seq_len']}, {a.threads} thread(s), {a.rounds} rounds x "
          f"{a.steps} steps, torch {torch.__version__}, load average {load0:.1f} -> {load1:.1f}")
    print("| variant | step ms (median) | tok/s | transformers / llmlab, median of rounds "
          "[min-max] | CPU ms per step (median) | CPU-time ratio, median of rounds |")
    print("|---|---|---|---|---|---|")
    rows: dict[str, dict[str, float]] = {}
    for name in variants:
        peer = f"{name.split(': ')[0]}: transformers"
        med, cmed = statistics.median(times[name]), statistics.median(cpu[name])
        ratio = cratio = ""
        rows[name] = {"step_ms": med * 1e3, "tok_per_s": tokens / med, "cpu_ms": cmed * 1e3}
        if name != peer:
            r = [p / o for p, o in zip(times[peer], times[name], strict=True)]
            ratio = f"{statistics.median(r):.2f}x [{min(r):.2f}-{max(r):.2f}]"
            c = [p / o for p, o in zip(cpu[peer], cpu[name], strict=True)]
            cratio = f"{statistics.median(c):.2f}x"
            rows[name] |= {"peer_ratio": statistics.median(r), "peer_ratio_min": min(r),
                           "peer_ratio_max": max(r), "cpu_ratio": statistics.median(c)}
        print(f"| {name} | {med * 1e3:.1f} | {tokens / med:,.0f} | {ratio} | {cmed * 1e3:.1f} "
              f"| {cratio} |")
    emit({"threads": a.threads, "rounds": a.rounds, "steps": a.steps,
          "batch": [t["batch_size"], t["seq_len"]], "load_average": [load0, load1],
          "variants": rows})


if __name__ == "__main__":
    main()
