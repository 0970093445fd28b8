"""Step time and peak memory of fine-tuning: full, LoRA and QLoRA, llmlab vs transformers + PEFT.

    PYTHONPATH=. python benchmarks/sft_peft.py [--batch 4 --seq 256 --steps 3 --rounds 3
                                 --threads 1 --clock cpu --bf16 --configs full,lora-r8-qv,...]
    PYTHONPATH=. python benchmarks/sft_peft.py --device cuda --bf16 --batch 8 --seq 1024 \
        --steps 20 --rounds 1        # the issue's H100 table
    PYTHONPATH=. python benchmarks/sft_peft.py --configs lora-r16-all --compile regional \
        --compile-mode eager,default,reduce-overhead ...   # compiled steps, one row per mode

The SmolLM2-135M shape with random weights (seed 0), fp32 on CPU (`--bf16`: bf16 autocast).
Both sides start from the same weights (ours written with `save_hf`, theirs loaded with
`from_pretrained`), see the same batch of random tokens, compute the same next-token
cross-entropy and use the same optimizer (fused AdamW). Configurations:

- full: every weight trained;
- lora-r8-qv: LoRA r=8, alpha=16 on q_proj and v_proj;
- lora-r16-all: LoRA r=16, alpha=32 on all linear layers (lm_head excluded, as PEFT);
- qlora-r16-all: the same LoRA over an NF4 base with double quantisation (ours: llmlab.peft.nf4;
  theirs: bitsandbytes' Linear4bit, the QLoRA reference, whose CPU path needs bitsandbytes
  >= 0.46; `prepare_model_for_kbit_training` without gradient checkpointing).

Each (config, implementation) runs in a fresh process; the two implementations alternate, and
the order flips each round, so machine noise hits both alike. Step = forward + loss + backward
+ optimizer step; the first step is a warm-up and not timed.

`--compile whole|regional` compiles both sides the same way: the whole model, or each decoder
block in place (ours `Block`, transformers' `LlamaDecoderLayer`; llmlab.train.compiling). The
warm-up step then includes the compile, reported as "first step"; each worker gets an empty
inductor cache, so that is a cold compile. `--compile-mode` lists torch.compile modes, one row
each ("eager": not compiled, the same-run reference). The transformers side runs with
`use_cache=False` (a training forward needs no KV cache; with one, each decoder layer passes
its own index to the cache and regional compilation recompiles per layer).

Peak memory is the process's resident-set high-water mark (VmHWM, which counts every torch CPU
allocation) during the timed steps, minus the resident set after imports: weights, gradients,
optimizer state and activations. The mark is reset (/proc/self/clear_refs) once the model is
built, so load-time transients of either side don't count; "setup" is the resident set then.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import emit, print_machine, stopwatch

from llmlab.model import Transformer
from llmlab.model.config import preset
from llmlab.peft.accounting import FROZEN_NF4_BYTES, SMOLLM2_135M, lora_params
from llmlab.peft.lora import LINEAR_NAMES
from llmlab.peft.model import get_peft_model
from llmlab.train.compiling import MODES, compile_model
from llmlab.weights.hf import save_hf

CONFIGS: dict[str, dict[str, Any]] = {
    "full": {},
    "lora-r8-qv": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
    "lora-r16-all": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
    "qlora-r16-all": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear", "nf4": True},
}
IMPLS = ("llmlab", "transformers+peft")
LR = 1e-4


def _mem_kib() -> dict[str, int]:
    s = Path("/proc/self/status").read_text()
    return {k: int(re.search(k + r":\s+(\d+)", s).group(1)) for k in ("VmRSS", "VmHWM")}


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS


def _cfg() -> Any:
    return preset("smollm2-135m", max_seq_len=2048)


def _ours(name: str) -> tuple[Any, dict[str, Any]]:
    torch.manual_seed(0)
    model = Transformer(_cfg())
    info: dict[str, Any] = {}
    c = dict(CONFIGS[name])
    if c:
        nf4 = c.pop("nf4", False)
        model = get_peft_model(model, "qlora" if nf4 else "lora", **c)
        info["trainable"] = model.parameter_counts()[0]
        if nf4:
            info["nf4_bytes"] = model.quantized_bytes
    return model, info


def _theirs(name: str, hf_dir: str, bf16: bool, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    import transformers

    c = dict(CONFIGS[name])
    nf4 = c.pop("nf4", False)
    kw: dict[str, Any] = {"dtype": torch.float32, "attn_implementation": "sdpa"}
    if nf4:
        kw["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32)
        kw["device_map"] = device  # bitsandbytes quantises as the weights land there
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, **kw)
    model.config.use_cache = False  # training: no KV cache (see the module docstring)
    info: dict[str, Any] = {}
    if c:
        import peft

        if nf4:
            model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        torch.manual_seed(0)  # the adapters' init, so runs repeat (it differs from ours)
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=c["r"], lora_alpha=c["lora_alpha"], target_modules=c["target_modules"],
            lora_dropout=0.0, task_type="CAUSAL_LM"))
        info["trainable"] = model.get_nb_trainable_parameters()[0]
    if nf4:
        info["nf4_bytes"] = sum(p.numel() * p.element_size() + _qstate_bytes(p)
                                for n, p in model.named_parameters() if p.dtype == torch.uint8)
    return model, info


def _qstate_bytes(p: Any) -> int:
    """Bytes of bitsandbytes' quantisation state (absmax and its second-level constants)."""
    qs = getattr(p, "quant_state", None)
    if qs is None:
        return 0
    n = qs.absmax.numel() * qs.absmax.element_size()
    if qs.state2 is not None:
        n += qs.state2.absmax.numel() * qs.state2.absmax.element_size() + qs.code.numel() * 4
    return n


def _compiled(model: Any, impl: str, scope: str | None, mode: str) -> Any:
    """What the step calls: the model itself (eager, or regional: its blocks compiled in
    place) or the compiled whole model."""
    if scope is None or mode == "eager":
        return model
    blocks = None
    if impl != "llmlab":
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        blocks = (LlamaDecoderLayer,)
    return compile_model(model, scope, mode, blocks)  # type: ignore[arg-type]


def worker(impl: str, name: str, b: int, t: int, steps: int, threads: int,
           hf_dir: str, bf16: bool, device: str = "cpu", compile: str | None = None,
           mode: str = "default") -> dict[str, Any]:
    if impl != "llmlab":
        import peft  # noqa: F401  (imports count in the baseline, not in the model's memory)
        import transformers  # noqa: F401
    torch.set_num_threads(threads)
    ids = torch.randint(0, _cfg().vocab_size, (b, t + 1),
                        generator=torch.Generator().manual_seed(1))
    gpu = device == "cuda"
    x, y = ids[:, :-1].to(device), ids[:, 1:].to(device)
    base = _mem_kib()["VmRSS"]
    model, info = _ours(name) if impl == "llmlab" else _theirs(name, hf_dir, bf16, device)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, fused=True)
    # Compiled: a small model's eager step is bound by kernel launches (13-16k per LoRA step
    # on an H100), which fusion removes; the first (untimed) step compiles.
    fwd = _compiled(model, impl, compile, mode)
    graphs = compile is not None and mode == "reduce-overhead" and gpu
    setup = torch.cuda.memory_allocated() // 1024 if gpu else _mem_kib()["VmRSS"]
    if gpu:  # the device's own high-water mark (weights, grads, optimizer state, activations)
        base = 0
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_peak()
    times, cpu, losses = [], [], []
    for _ in range(steps + 1):
        sw, c0 = stopwatch(device), time.process_time()
        if graphs:  # a new step: CUDA-graph outputs of the last one may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = fwd(input_ids=x).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(sw())  # waits for the GPU's queue
        cpu.append(time.process_time() - c0)
        losses.append(round(loss.item(), 5))
    peak = torch.cuda.max_memory_allocated() // 1024 if gpu else _mem_kib()["VmHWM"]
    # Optimizer state as allocated (two fp32 moments per trained element, plus step counters).
    state = sum(v.numel() * v.element_size() for s in opt.state.values()
                for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    return {"impl": impl, "config": name, "mode": mode if compile else "eager",
            "first_s": times[0], "wall_s": times[1:], "cpu_s": cpu[1:], "losses": losses,
            "setup_mib": round((setup - base) / 1024), "peak_mib": round((peak - base) / 1024),
            "trainable": info.get("trainable", sum(p.numel() for p in params)),
            "opt_state_bytes": state, "nf4_bytes": info.get("nf4_bytes")}


def _run(impl: str, name: str, mode: str, a: argparse.Namespace, hf_dir: str
         ) -> dict[str, Any] | str:
    """One worker process's results, or why there are none: it ran past --worker-timeout, or
    (compiled) it failed; the run goes on to the next."""
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--worker", impl, name, "--batch", str(a.batch),
           "--seq", str(a.seq), "--steps", str(a.steps), "--threads", str(a.threads),
           "--hf-dir", hf_dir, "--device", a.device] + (["--bf16"] if a.bf16 else [])
    if a.compile:
        cmd += ["--compile", a.compile, "--compile-mode", mode]
    with tempfile.TemporaryDirectory() as cache:  # a cold compile in every worker
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True,
                               timeout=a.worker_timeout)
        except subprocess.TimeoutExpired:
            return f"TIMED OUT after {a.worker_timeout:.0f} s"
    if r.returncode:
        if mode == "eager":
            raise SystemExit(f"{impl} {name} failed:\n{r.stderr[-3000:]}")
        return f"FAILED:\n{r.stderr[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def _accounting(name: str) -> dict[str, Any]:
    """What llmlab.peft.accounting predicts: trainable parameters, AdamW state bytes (fp32),
    and for NF4 the stored bytes of the quantised Linears vs the same Linears in bf16."""
    c = CONFIGS[name]
    s = SMOLLM2_135M
    if not c:
        n = s.total_params()
    else:
        tm = c["target_modules"]
        n = lora_params(s, c["r"], list(LINEAR_NAMES) if tm == "all-linear" else tm)
    out: dict[str, Any] = {"trainable": n, "opt_state_bytes": 2 * 4 * n}
    if c.get("nf4"):
        lin = s.n_layers * sum(a * b for a, b in s.linear_shapes().values())
        out.update(linear_params=lin, bf16_bytes=2 * lin, nf4_bytes_est=FROZEN_NF4_BYTES * lin)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per process")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: process CPU seconds per step (robust on a shared machine with "
                         "--threads 1); wall: elapsed seconds")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--bf16", action="store_true",
                    help="bf16 autocast on both sides (weights and adapters stay fp32)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: peak memory is torch.cuda.max_memory_allocated, step time is "
                         "wall time after a synchronize")
    ap.add_argument("--compile", nargs="?", const="whole", choices=("whole", "regional"),
                    help="torch.compile both sides (the first step compiles): the whole model "
                         "(the default), or each decoder block in place")
    ap.add_argument("--compile-mode", default="default",
                    help="with --compile: comma-separated torch.compile modes, a row each: "
                         "default, reduce-overhead (CUDA graphs), max-autotune-no-cudagraphs, "
                         "... or eager (not compiled)")
    ap.add_argument("--worker-timeout", type=float,
                    help="seconds one worker may run; past it, its row is reported as timed out")
    ap.add_argument("--out", help="write all raw results here (JSON)")
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "CONFIG"), help=argparse.SUPPRESS)
    ap.add_argument("--hf-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        emit(worker(*a.worker, a.batch, a.seq, a.steps, a.threads, a.hf_dir, a.bf16, a.device,
                    a.compile, a.compile_mode))
        return
    names = a.configs.split(",")
    bad = [n for n in names if n not in CONFIGS]
    if bad:
        raise SystemExit(f"--configs: unknown {bad}; valid: {', '.join(CONFIGS)}")
    modes = a.compile_mode.split(",") if a.compile else ["eager"]
    bad = [m for m in modes if m not in MODES + ("eager",)]
    if bad:
        raise SystemExit(f"--compile-mode: unknown {bad}; valid: eager, {', '.join(MODES)}")
    if a.device == "cuda":
        a.clock = "wall"  # CPU seconds mean nothing for GPU work
    print_machine(a.device, BxT=f"{a.batch} x {a.seq}", dtype="bf16 autocast" if a.bf16
                  else "fp32", threads=a.threads, mode=f"compiled ({a.compile}; modes "
                  f"{a.compile_mode})" if a.compile else "eager",
                  timed=f"{a.steps} steps x {a.rounds} rounds")
    raw: list[dict[str, Any]] = []
    key = f"{a.clock}_s"
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    with tempfile.TemporaryDirectory() as hf_dir:
        torch.manual_seed(0)
        save_hf(Transformer(_cfg()), hf_dir)
        for rnd in range(a.rounds):
            for name in names:
                for mode in modes:
                    order = IMPLS if rnd % 2 == 0 else IMPLS[::-1]
                    for impl in order:
                        if impl != "llmlab" and CONFIGS[name].get("nf4") and not has_bnb:
                            print(f"{name} {impl}: skipped (needs bitsandbytes >= 0.46: "
                                  "`pip install .[bench]`)", flush=True)
                            continue
                        label = name if mode == "eager" and not a.compile else f"{name} {mode}"
                        r = _run(impl, name, mode, a, hf_dir)
                        if isinstance(r, str):
                            print(f"round {rnd} {label} {impl}: {r}", flush=True)
                            continue
                        r["label"] = label
                        raw.append(r)
                        print(f"round {rnd} {label:14s} {impl:18s} median step cpu "
                              f"{statistics.median(r['cpu_s']):.3f} s wall "
                              f"{statistics.median(r['wall_s']):.3f} s, first step "
                              f"{r['first_s']:.1f} s, peak {r['peak_mib']} MiB "
                              f"(setup {r['setup_mib']}), losses {r['losses'][:2]}", flush=True)
    labels = list(dict.fromkeys(r["label"] for r in raw))
    emit({"args": vars(a), "raw": raw, "rows": _summarise(raw, labels, key)}, a.out)


def _summarise(raw: list[dict[str, Any]], labels: list[str], key: str) -> list[dict[str, Any]]:
    """One row per label (a config, and with --compile its mode); a side that was skipped or
    timed out shows nan."""
    def pick(impl: str, label: str) -> list[dict[str, Any]]:
        return [r for r in raw if r["impl"] == impl and r["label"] == label]

    def med(rs: list[dict[str, Any]], k: str) -> float:
        return statistics.median(s for r in rs for s in r[k]) if rs else math.nan

    def first(rs: list[dict[str, Any]]) -> float:
        return statistics.median(r["first_s"] for r in rs) if rs else math.nan

    rows = []
    print(f"\n| config | llmlab step s ({key[:-2]}) | PEFT step s | PEFT / llmlab | "
          "llmlab full / this | llmlab first step s | PEFT first step s | "
          "llmlab peak MiB | PEFT peak MiB | trainable (llmlab / PEFT / accounting) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label in labels:
        ours, theirs = pick("llmlab", label), pick("transformers+peft", label)
        some = (ours or theirs)[0]
        name, mode = some["config"], some["mode"]
        so, st = med(ours, key), med(theirs, key)
        full = [r for r in raw if r["impl"] == "llmlab" and r["config"] == "full"
                and r["mode"] == mode]
        rel = f"{med(full, key) / so:.2f}x" if full and name != "full" else "-"
        po = max((r["peak_mib"] for r in ours), default=math.nan)
        pt = max((r["peak_mib"] for r in theirs), default=math.nan)
        acc = _accounting(name)
        row = {"config": name, "mode": mode, "label": label, "llmlab_step_s": so,
               "peft_step_s": st, "ratio": st / so, "llmlab_first_s": first(ours),
               "peft_first_s": first(theirs), "llmlab_peak_mib": po, "peft_peak_mib": pt,
               "trainable": ours[0]["trainable"] if ours else 0,
               "peft_trainable": theirs[0]["trainable"] if theirs else 0, "accounting": acc,
               "opt_state_bytes": ours[0]["opt_state_bytes"] if ours else 0,
               "nf4_bytes": ours[0]["nf4_bytes"] if ours else None,
               "peft_nf4_bytes": theirs[0]["nf4_bytes"] if theirs else None}
        rows.append(row)
        print(f"| {label} | {so:.3f} | {st:.3f} | {st / so:.2f}x | {rel} | "
              f"{row['llmlab_first_s']:.1f} | {row['peft_first_s']:.1f} | {po} | {pt} | "
              f"{row['trainable']:,} / {row['peft_trainable']:,} / {acc['trainable']:,} |")
    print()
    for row in rows:
        acc = row["accounting"]
        ok = row["opt_state_bytes"] == acc["opt_state_bytes"] and row["trainable"] == acc[
            "trainable"]
        print(f"{row['label']}: AdamW state {row['opt_state_bytes']:,} B (accounting "
              f"{acc['opt_state_bytes']:,} B) -> {'match' if ok else 'MISMATCH'}")
        if row["nf4_bytes"]:
            theirs_nf4 = "not run" if row["peft_nf4_bytes"] is None else \
                f"{row['peft_nf4_bytes']:,} B"
            print(f"{row['label']}: NF4 base linears {row['nf4_bytes']:,} B = "
                  f"{100 * row['nf4_bytes'] / acc['bf16_bytes']:.1f}% of bf16 "
                  f"({acc['bf16_bytes']:,} B); bitsandbytes {theirs_nf4}")
    return rows


if __name__ == "__main__":
    main()
