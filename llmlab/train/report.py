"""`llmlab report RUN_DIR`: loss curves as a PNG and a summary of a training run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

# Peak dense FLOP/s assumed for MFU. GPUs: bf16 tensor-core dense peak from the datasheets
# (SXM parts). CPUs: cores x clock x fp32 FLOPs/cycle, 64 with AVX-512 (two 512-bit FMA pipes,
# as on Zen 5 and Xeons; oneDNN's fp32 matmuls reach 200 GFLOP/s on one 2.6 GHz Zen 5 core,
# above a 32-per-cycle peak) and 32 without (two 256-bit FMA pipes). Zen 4 and some Intel
# parts have half the AVX-512 figure; pass --peak-flops for those and anything else.
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "4090": 165e12}


def cpu_flops_per_cycle() -> int:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 32
    return 64 if " avx512f " in flags else 32


def cpu_peak_flops(cores: int | None = None) -> float:
    mhz = 2500.0
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        mhz = max(float(x.split(":")[1]) for x in lines if x.startswith("cpu MHz"))
    except (OSError, ValueError):
        pass
    return (cores or os.cpu_count() or 1) * mhz * 1e6 * cpu_flops_per_cycle()


def peak_flops(device_name: str, threads: int | None = None) -> tuple[float, str]:
    for key, v in GPU_PEAK_BF16.items():
        if key in device_name:
            return v, f"{key} bf16 dense {v / 1e12:.0f} TFLOP/s"
    v = cpu_peak_flops(threads)
    return v, (f"CPU {threads or os.cpu_count()} cores x clock x {cpu_flops_per_cycle()} "
               f"FLOP/cycle = {v / 1e9:.0f} GFLOP/s")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; is {run_dir} a training run directory?")
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if "loss" in r]  # a step-0 record holds only held-out metrics
    if not rows:
        raise ValueError(f"{path}: empty, the run logged no step")
    return rows


def summarize(run_dir: str | Path, peak: float | None = None) -> dict[str, Any]:
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() \
        else {}
    vals = [r for r in rows if "val_loss" in r]
    # Median of the logged rates: robust to the first (warm-up, compile) interval.
    rates = sorted(r["tok_per_s"] for r in rows[1:] or rows)
    tps = rates[len(rates) // 2]
    world = info.get("world", 1)
    if peak is None:
        peak, peak_note = peak_flops(info.get("device_name", "cpu"), info.get("threads"))
        peak *= world
    else:
        peak_note = f"given: {peak / 1e12:.3g} TFLOP/s"
    n = info.get("n_params")
    out: dict[str, Any] = {
        "run_dir": str(run_dir), "steps": rows[-1]["step"], "tokens": rows[-1]["tokens"],
        "final_train_loss": rows[-1]["loss"], "tok_per_s": tps, "n_params": n,
        "device": info.get("device_name"), "world": world,
        "unigram_entropy_nats": info.get("unigram_entropy_nats"),
    }
    if vals:
        out["final_val_loss"] = vals[-1]["val_loss"]
        out["final_val_ppl"] = math.exp(vals[-1]["val_loss"])
        out["best_val_loss"] = min(v["val_loss"] for v in vals)
    if n:
        out["mfu"] = 6 * n * tps / peak
        out["peak_flops_assumed"] = peak_note
    return out


def plot(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() \
        else {}
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot([r["tokens"] for r in rows], [r["loss"] for r in rows], label="train loss", lw=1)
    vals = [r for r in rows if "val_loss" in r]
    if vals:
        ax.plot([r["tokens"] for r in vals], [r["val_loss"] for r in vals], "o-", label="val loss")
    if info.get("unigram_entropy_nats"):
        ax.axhline(info["unigram_entropy_nats"], ls="--", c="gray", label="unigram baseline")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(run_dir.name)
    ax.legend()
    ax.grid(alpha=0.3)
    path = Path(out) if out else run_dir / "loss.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"run            {s['run_dir']}",
             f"steps          {s['steps']}  tokens {s['tokens']:,}",
             f"train loss     {s['final_train_loss']:.4f}"]
    if "final_val_loss" in s:
        lines.append(f"val loss       {s['final_val_loss']:.4f}  (perplexity "
                     f"{s['final_val_ppl']:.2f}; best {s['best_val_loss']:.4f})")
    if s.get("unigram_entropy_nats"):
        u = s["unigram_entropy_nats"]
        lines.append(f"unigram        {u:.4f} nats (perplexity {math.exp(u):.1f})")
    lines.append(f"throughput     {s['tok_per_s']:,.0f} tok/s on {s['world']} x {s['device']}")
    if "mfu" in s:
        lines.append(f"MFU            {100 * s['mfu']:.2f}%  (6*N*tok/s, N={s['n_params']:,}; "
                     f"peak {s['peak_flops_assumed']})")
    return "\n".join(lines)
