"""The LoRA page's live demo, timed end to end: a run started through the playground's
RunManager (a worker process running `llmlab sft`), from start to status "finished".

    PYTHONPATH=. python benchmarks/lora_live.py [--threads 2] [--steps 30] [--root DIR]

The options are the page's defaults (web/src/pages/loralive.ts: FIXED and the controls'
initial values). Prints the wall time, seconds per step (the mean of the metrics' time/step),
the evaluations' time, the machine's load average before and after (the box may be shared),
and the held-out answers before (step 0) and after (the last evaluation).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _common import emit, print_machine

from llmlab.lab.runs import RunManager

PAGE = {"data": "trivia", "peft": "lora", "batch_size": 4, "seq_len": 160, "eval_every": 10,
        "eval_batches": 2, "sample_prompts": 3, "sample_tokens": 24, "warmup_steps": 3,
        "log_every": 1, "ckpt_every": 10, "model": "smollm2-135m-instruct", "lora_r": 8,
        "lora_alpha": 16, "target_modules": "q_proj,v_proj", "max_steps": 30, "lr": 1e-3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--root", default=None, help="runs folder (default: a temp dir)")
    a = ap.parse_args()
    print_machine(threads=a.threads)
    root = Path(a.root or tempfile.mkdtemp(prefix="lora_live_"))
    m = RunManager(root, threads=a.threads)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    run = m.start("sft", {**PAGE, "max_steps": a.steps})
    first = None
    while (st := m.get(run["id"]))["status"] in ("running", "stopping"):
        if first is None and st["step"]:
            first = time.perf_counter() - t0
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    d = m.run_dir(run["id"])
    recs = [json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(ln) for ln in (d / "samples.jsonl").read_text().splitlines()]
    last = max(s["step"] for s in samples)
    steps = [r["time/step"] for r in recs]
    out = {
        "status": st["status"], "error": st["error"], "wall_s": round(wall, 1),
        "first_point_s": round(first or 0, 1), "steps": len(steps),
        "s_per_step": round(sum(steps) / max(1, len(steps)), 2),
        "s_per_step_min": round(min(steps, default=0), 2),
        "eval_s": [round(r["time/eval"], 1) for r in recs if "time/eval" in r],
        "val_loss": [round(r["val_loss"], 3) for r in recs if "val_loss" in r],
        "loadavg_before": load0, "loadavg_after": load1,
        "trainable": st["info"].get("trainable"),
        "before_after": [{"prompt": b["prompt"].split("\n")[-1], "before": b["answer"],
                          "after": f["answer"], "reference": b["reference"]}
                         for b, f in zip([s for s in samples if s["step"] == 0],
                                         [s for s in samples if s["step"] == last],
                                         strict=True)],
    }
    for row in out["before_after"]:
        print(json.dumps(row))
    emit(out)


if __name__ == "__main__":
    main()
