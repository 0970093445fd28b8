"""The CPU speedrun: time to a pinned validation bits-per-byte, a recipe against the baseline.

Each seed runs the baseline (`tiny-cpu`) and the recipe (`speedrun-cpu`) in turn, in this one
invocation, on the same prepared KJV data (tokenized once, not timed), each with
`--target-val-bpb TARGET`. Time to target is the Trainer's training time when validation
first reaches the target (metrics.jsonl `time_to_target_s`: evaluation, samples and
checkpoints excluded), so evaluating often to catch the crossing costs nothing measured. A
run that ends without reaching it counts as never (infinite time).

It reports, per recipe, the median time to target with a distribution-free 95% interval
for the median (order statistics; with few seeds the widest available), the ratio of the
medians, and a one-sided Mann-Whitney U test that the recipe's times are shorter (with 5
seeds each, all recipe runs faster than all baseline runs gives p = 1/252 = 0.004). The last
line is one JSON object.

    PYTHONPATH=. python benchmarks/speedrun_cpu.py [--seeds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, emit, print_machine

# The pinned target (and why 1.35) lives in the library: the playground's race uses it too.
from llmlab.train.speedrun import BASELINE, EVAL_EVERY, RECIPE, TARGET_BPB


def run(preset: str, seed: int, data: Path, out: Path, target: float, threads: int,
        eval_every: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "llmlab.train.cli", "pretrain", "--preset", preset,
           "--data", str(data), "--out", str(out), "--seed", str(seed),
           "--target-val-bpb", str(target), "--threads", str(threads),
           "--eval-every", str(eval_every), "--sample-tokens", "0", "--ckpt-every", "0",
           "--no-progress", "--no-tensorboard", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{preset} seed {seed} failed:\n{r.stderr[-2000:]}")
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    hit = next((x for x in rows if x.get("target_reached")), None)
    evals = [x for x in rows if "val_bpb" in x]
    return {"preset": preset, "seed": seed, "reached": hit is not None,
            "time_s": hit["time_to_target_s"] if hit else math.inf,
            "tokens": hit["tokens_to_target"] if hit else None,
            "steps": hit["step"] if hit else None,
            "final_bpb": evals[-1]["val_bpb"] if evals else None,
            "train_time_s": rows[-1].get("train_time_s")}


def median_interval(xs: list[float], level: float = 0.95) -> tuple[float, float]:
    """The widest order-statistic pair (x_(k), x_(n+1-k)) covering the median with at least
    `level` probability (binomial(n, 1/2)); with too few runs, the min and max."""
    xs, n = sorted(xs), len(xs)
    best = (xs[0], xs[-1])
    for k in range(1, n // 2 + 1):
        cover = 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n
        if cover >= level:
            best = (xs[k - 1], xs[n - k])
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=RECIPE)
    p.add_argument("--baseline", default=BASELINE)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--target", type=float, default=TARGET_BPB)
    p.add_argument("--eval-every", type=int, default=EVAL_EVERY)
    p.add_argument("--recipe-flags", default="", help="extra pretrain flags for the recipe")
    a = p.parse_args()
    if a.target <= 0:
        raise SystemExit("--target: no target pinned yet; pass one")
    machine = print_machine(threads=a.threads)
    from scipy.stats import mannwhitneyu

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run([sys.executable, "-m", "llmlab.train.cli", "data", "prepare", "--input",
                        "kjv", "--tokenizer", "bpe:4096", "--val-fraction", "0.05", "--out",
                        str(data), "--quiet"], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        runs: list[dict] = []
        for seed in range(a.seeds):  # in turn, so both see the same machine state
            for preset, extra in ((a.baseline, []), (a.recipe, a.recipe_flags.split())):
                r = run(preset, seed, data, Path(tmp) / f"{preset}-{seed}", a.target,
                        a.threads, a.eval_every, extra)
                runs.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
    times = {k: [r["time_s"] for r in runs if r["preset"] == k] for k in (a.baseline, a.recipe)}
    base, rec = times[a.baseline], times[a.recipe]
    summary = {k: {"median_s": statistics.median(v), "interval95_s": median_interval(v),
                   "reached": sum(math.isfinite(x) for x in v), "runs": len(v)}
               for k, v in times.items()}
    # No ratio when the baseline's median run never got there (it would read as 0).
    mb = statistics.median(base)
    ratio = statistics.median(rec) / mb if math.isfinite(mb) else math.nan
    p_value = float(mannwhitneyu(rec, base, alternative="less", method="exact").pvalue)
    for k, s in summary.items():
        lo, hi = s["interval95_s"]
        print(f"{k:>14}: median {s['median_s']:.1f} s to {a.target} bpb "
              f"(95% interval {lo:.1f}-{hi:.1f} s; reached {s['reached']}/{s['runs']})")
    print(f"ratio recipe/baseline {ratio:.3f}; one-sided Mann-Whitney p = {p_value:.4f}"
          + ("" if math.isfinite(ratio) else " (the baseline's median run missed the target)"))
    emit({"benchmark": "speedrun_cpu", "machine": machine, "target_bpb": a.target,
          "threads": a.threads, "seeds": a.seeds, "summary": summary,
          "ratio": ratio if math.isfinite(ratio) else None,
          "p_value": p_value, "runs": runs})


if __name__ == "__main__":
    main()
