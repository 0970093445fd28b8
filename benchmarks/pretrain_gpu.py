"""GPU training throughput on the GPT-2-124M shape: llmlab vs transformers, both compiled.

B x T = 16 x 1024, bf16 autocast, torch.compile of the model with its loss (forward + loss
in one graph; AOTAutograd compiles the backward), fused AdamW and the same SDPA backend for
both sides. The two take turns round by round. Prints step time, tokens/s and MFU with
nanoGPT's FLOP count, 6 * N + 12 * L * d * T per token (N without the position embeddings):
with it, transformers' 281k tok/s on an H100 is the issue's 24% MFU. Peak from
llmlab.train.report.GPU_PEAK_BF16 by device name (H100/H200 SXM: 989 TFLOP/s dense bf16) or
--peak-flops.

    PYTHONPATH=. python benchmarks/pretrain_gpu.py                  # one H100, ~5 minutes
    PYTHONPATH=. python benchmarks/pretrain_gpu.py --pad-vocab 128  # also both at vocab 50304
    PYTHONPATH=. python benchmarks/pretrain_gpu.py --dry-run        # CPU, tiny shape: no crash
    PYTHONPATH=. python benchmarks/pretrain_gpu.py --loss fused --optimizer muon --qk-norm \
        --mlp relu2 --logit-softcap 15 --value-embeds 3   # + a row with the speedrun switches

Any switch flag (issue #25's: Muon, QK-norm, ReLU², soft-capping, value embeddings) adds a
variant, llmlab's fused-loss step on the switched model, timed in the same rounds as the
plain one, so its cost per step and its MFU read side by side (transformers can't run them).

`--dry-run` runs the same code (compile, autocast, fused AdamW, the rounds) on the CPU with a
tiny shape, to check the script before spending GPU time; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Callable
from typing import get_args

import torch
import torch.nn.functional as F
from _common import emit, print_machine, stopwatch, sync

from llmlab.model import ModelConfig, Transformer, preset
from llmlab.model.config import MlpKind
from llmlab.model.quant import fuse_projections_
from llmlab.train.muon import Muon, muon_groups
from llmlab.train.optim import make_adamw, param_groups
from llmlab.train.pretrain import next_token_loss
from llmlab.train.report import peak_flops

Step = Callable[[], torch.Tensor]


def flops_per_token(cfg: ModelConfig, n_params: int, seq: int) -> float:
    """nanoGPT's estimate: 6 FLOPs per weight (forward + backward) over the non-position
    weights, plus attention's QK^T and AV: 12 * layers * d_model * T. Value-embedding tables
    are looked up, not multiplied: they count as the position table does, not at all."""
    assert cfg.n_kv_head is not None and cfg.head_dim is not None
    n = n_params - (cfg.max_seq_len * cfg.d_model if cfg.pos == "learned" else 0)
    n -= cfg.value_embeds * cfg.vocab_size * cfg.n_kv_head * cfg.head_dim
    return 6 * n + 12 * cfg.n_layer * cfg.d_model * seq


def _sdpa(kind: str) -> contextlib.AbstractContextManager:
    if kind == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[kind]
    return sdpa_kernel(backend)


def ours(cfg: ModelConfig, x: torch.Tensor, a: argparse.Namespace,
         loss_kind: str = "fused", fuse: bool = False, optimizer: str = "adamw"
         ) -> tuple[Step, int]:
    torch.manual_seed(0)
    model = Transformer(cfg).to(x.device)
    if fuse:  # Q/K/V as one (d, 3d) weight: one GEMM instead of three (same init, same model)
        fuse_projections_(model)
    # As the Trainer builds it: decay groups, fused AdamW; or Muon for the hidden matrices
    # with AdamW for the rest (train/muon.py, TrainConfig's default muon_lr).
    if optimizer == "muon":
        opt: torch.optim.Optimizer = Muon(muon_groups(model, 6e-4, 0.02, 0.1), 6e-4,
                                          betas=(0.9, 0.95))
    else:
        opt = make_adamw(param_groups(model, 0.1), 6e-4, (0.9, 0.95), 1e-8, x.device)
    batch = {"input_ids": x[:, :-1], "labels": x[:, 1:]}
    if loss_kind == "fused":  # the model's own chunked projection + cross-entropy
        fwd = torch.compile(model, mode=a.mode) if a.compile else model

        def loss_fn() -> torch.Tensor:
            return next_token_loss(fwd, batch)[0]
    else:  # bf16 logits, fp32 cross-entropy, in the same compiled graph (as transformers)
        def plain(inp: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
            logits = model(inp).logits
            return F.cross_entropy(logits.flatten(0, 1).float(), lab.flatten())

        cl = torch.compile(plain, mode=a.mode) if a.compile else plain

        def loss_fn() -> torch.Tensor:
            return cl(batch["input_ids"], batch["labels"])

    def step() -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16), _sdpa(a.sdpa):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step, model.num_params()


def hf(cfg: ModelConfig, x: torch.Tensor, a: argparse.Namespace) -> tuple[Step, int]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hc = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model,
                    n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                    attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                    attn_implementation="sdpa")
    model = GPT2LMHeadModel(hc).to(x.device)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=True)
    fwd = torch.compile(model, mode=a.mode) if a.compile else model
    inp = x[:, :-1].contiguous()

    def step() -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16), _sdpa(a.sdpa):
            loss = fwd(inp, labels=inp).loss  # transformers shifts the labels inside
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step, model.num_parameters()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation) each")
    ap.add_argument("--peak-flops", type=float, default=None)
    ap.add_argument("--mode", default=None, help="torch.compile mode for both, e.g. "
                    "max-autotune-no-cudagraphs (longer compile)")
    ap.add_argument("--sdpa", default="auto", choices=["auto", "flash", "cudnn", "efficient",
                                                         "math"],
                    help="SDPA backend forced on both sides (default: torch's choice)")
    ap.add_argument("--pad-vocab", type=int, default=0,
                    help="also run both sides with the vocab padded to a multiple of this "
                         "(MFU still counts the unpadded model's FLOPs)")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--fuse-qkv", action="store_true",
                    help="also llmlab with Q/K/V trained as one fused weight")
    ap.add_argument("--loss", nargs="+", default=["fused", "plain"], choices=["fused", "plain"],
                    help="llmlab variants: the model's fused chunked loss, and/or bf16 logits + "
                         "F.cross_entropy compiled together")
    ap.add_argument("--profile", action="store_true",
                    help="after timing, print the kernels of 3 steps of the last llmlab variant "
                         "by GPU time (where the step's time goes)")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, tiny shape, 1 round of 1 step: check the script runs")
    sw = ap.add_argument_group("switches", "any of these adds a variant: llmlab's fused-loss "
                               "step on the GPT-2 shape with them (ModelConfig/TrainConfig's "
                               "fields of the same names)")
    sw.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw")
    sw.add_argument("--qk-norm", action="store_true")
    sw.add_argument("--mlp", choices=list(get_args(MlpKind)), default=None)
    sw.add_argument("--logit-softcap", type=float, default=0.0, metavar="C")
    sw.add_argument("--value-embeds", type=int, default=0, metavar="N")
    a = ap.parse_args()
    if a.logit_softcap < 0 or a.value_embeds < 0:
        ap.error("--logit-softcap and --value-embeds: expected non-negative values")
    if a.dry_run:
        device = torch.device("cpu")
        cfg = ModelConfig(vocab_size=500, d_model=64, n_layer=2, n_head=4, max_seq_len=64)
        a.batch, a.seq, a.steps, a.rounds, a.warmup = 2, 64, 1, 1, 1
        a.pad_vocab = a.pad_vocab or 128
        peak, note = 1e12, "dry run: 1 TFLOP/s assumed"
    else:
        if not torch.cuda.is_available():
            print("pretrain_gpu.py needs a CUDA GPU (or --dry-run); none found", file=sys.stderr)
            return 1
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True  # any fp32 matmul left outside autocast
        torch.backends.cudnn.allow_tf32 = True
        cfg = preset("gpt2", max_seq_len=a.seq)
        name = torch.cuda.get_device_name()
        peak, note = (a.peak_flops, "given") if a.peak_flops else peak_flops(name)
    print_machine(device)
    torch.manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (a.batch, a.seq + 1), device=device)
    tokens = a.batch * a.seq
    dev = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (dry run)"
    print(f"{dev}; GPT-2 shape d={cfg.d_model} L={cfg.n_layer} V={cfg.vocab_size}, "
          f"{a.batch}x{a.seq}, bf16 autocast, compile={a.compile} mode={a.mode}, "
          f"sdpa={a.sdpa}, fused AdamW; torch {torch.__version__}; peak {note}")
    switched, switches = switch_config(cfg, a)
    if switches:
        print(f"switches: {switches}")
    shapes = {"": cfg}
    if a.pad_vocab:
        v = -(-cfg.vocab_size // a.pad_vocab) * a.pad_vocab
        shapes[f", vocab padded to {v}"] = ModelConfig(**{**cfg.to_dict(), "vocab_size": v})
    variants: dict[str, tuple[Step, float]] = {}
    n_true = None
    for suffix, c in shapes.items():
        builds: list[tuple[str, Callable[..., tuple[Step, int]]]] = [
            ("transformers GPT2LMHeadModel", hf)]
        for lk in a.loss:
            builds.append((f"llmlab ({lk} loss)",
                           lambda c_, x_, a_, lk=lk: ours(c_, x_, a_, lk)))
        if a.fuse_qkv:
            builds.append(("llmlab (fused loss, fused QKV)",
                           lambda c_, x_, a_: ours(c_, x_, a_, "fused", fuse=True)))
        if switches:
            sc = ModelConfig(**{**switched.to_dict(), "vocab_size": c.vocab_size})
            builds.append((f"llmlab (fused loss, {switches})",
                           lambda c_, x_, a_, sc=sc: ours(sc, x_, a_, "fused",
                                                          optimizer=a.optimizer)))
        for label, build in builds:
            step, n = build(c, x, a)
            n_true = n_true or n  # MFU counts the unpadded model's FLOPs
            t = stopwatch(device)
            losses = [float(step()) for _ in range(a.warmup)]
            print(f"  {label}{suffix}: {n / 1e6:.1f}M params, warm-up (compile) "
                  f"{t():.0f} s, first loss {losses[0]:.3f} "
                  f"(ln V = {torch.log(torch.tensor(float(c.vocab_size))):.3f})", flush=True)
            fpt = flops_per_token(cfg, n_true, a.seq)
            if switches and label.endswith(f", {switches})"):  # its own shape, unpadded
                fpt = flops_per_token(switched, switched.num_params(), a.seq)
            variants[label + suffix] = (step, fpt)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for name, (step, _) in variants.items():
            t = stopwatch(device)
            for _ in range(a.steps):
                step()
            times[name].append(t() / a.steps)
    print("| variant | step ms (median) | tok/s | MFU |\n|---|---|---|---|")
    rows: dict[str, dict[str, float]] = {}
    for name, (_, fpt) in variants.items():
        dt = statistics.median(times[name])
        rows[name] = {"step_ms": dt * 1e3, "tok_per_s": tokens / dt,
                      "mfu": fpt * tokens / dt / peak}
        print(f"| {name} | {dt * 1e3:.1f} | {tokens / dt:,.0f} | "
              f"{100 * fpt * tokens / dt / peak:.1f}% |")
    ratios: dict[str, float] = {}
    cost: dict[str, float] = {}
    for suffix in shapes:
        for lk in a.loss:
            r = (statistics.median(times[f"transformers GPT2LMHeadModel{suffix}"])
                 / statistics.median(times[f"llmlab ({lk} loss){suffix}"]))
            print(f"llmlab ({lk} loss) speed vs transformers{suffix}: {r:.2f}x")
            ratios[f"llmlab ({lk} loss){suffix}"] = r
        if switches and "fused" in a.loss:  # the switches' step time over the plain one's
            r = (statistics.median(times[f"llmlab (fused loss, {switches}){suffix}"])
                 / statistics.median(times[f"llmlab (fused loss){suffix}"]))
            print(f"step time with {switches} / without{suffix}: {r:.2f}x")
            cost[suffix or "unpadded"] = r
    peak_gib = None
    if device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak memory {peak_gib:.1f} GiB")
    if a.profile:
        name = [k for k in variants if k.startswith("llmlab")][-1]
        _profile(name, variants[name][0], device)
    emit({"device": dev, "batch": a.batch, "seq": a.seq, "compile": a.compile, "mode": a.mode,
          "sdpa": a.sdpa, "peak_flops": peak, "peak_note": note, "variants": rows,
          "speed_vs_transformers": ratios, "peak_memory_gib": peak_gib,
          "switches": switches, "switch_step_time_ratio": cost})
    return 0


def switch_config(cfg: ModelConfig, a: argparse.Namespace) -> tuple[ModelConfig, str]:
    """`cfg` with the switch flags applied, and their label ("" when none is given)."""
    on = {"qk_norm": a.qk_norm, "mlp": a.mlp or cfg.mlp, "logit_softcap": a.logit_softcap,
          "value_embeds": a.value_embeds}
    try:
        switched = ModelConfig(**{**cfg.to_dict(), **on})
    except ValueError as e:  # value_embeds above n_layer
        raise SystemExit(f"pretrain_gpu.py: {e}") from None
    parts = [f"{k}={v}" if not isinstance(v, bool) else k
             for k, v in on.items() if v and v != getattr(cfg, k)]
    if a.optimizer != "adamw":
        parts.insert(0, a.optimizer)
    return switched, " + ".join(parts)


def _profile(name: str, step: Step, device: torch.device, steps: int = 3) -> None:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"# profile of {name}, {steps} steps")
    print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60))


if __name__ == "__main__":
    sys.exit(main())
