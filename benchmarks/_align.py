"""Shared parts of benchmarks/align_demo.py and align_checks.py: the `llmlab` subprocess,
the base model, the preference pairs and held-out arithmetic accuracy (through the Task)."""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import llmlab
from llmlab.align.data import load_prefs, task_prefs
from llmlab.generate.chat import encode_prompts
from llmlab.generate.engine import complete, make_params
from llmlab.peft.model import apply_adapter
from llmlab.tasks.arithmetic import ARITHMETIC, ARITHMETIC_EASY
from llmlab.tasks.metrics import wilson_interval

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
COMMON = ["--model", MODEL, "--warmup-steps", "5", "--log-every", "1", "--no-progress",
          "--no-tensorboard"]
FORMAT = r"answer is \$?-?[0-9][0-9,]*(\.[0-9]+)?\.?\s*$"  # ends by stating its answer


def run_llmlab(args: list[str], threads: int) -> float:
    """One `llmlab` process with the exact arguments printed; returns its wall seconds."""
    cmd = [sys.executable, "-m", "llmlab.cli", *args, "--threads", str(threads)]
    print("$ llmlab " + " ".join(args + ["--threads", str(threads)]), flush=True)
    # Keep the caller's PYTHONPATH after the repo (a GPU machine finds the weights there).
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    return time.perf_counter() - t0


@functools.cache
def base_lm() -> Any:
    """SmolLM2, loaded once per process, for read-only uses (sampling pairs, tokenizing);
    stages that attach adapters load their own copy."""
    return llmlab.load(MODEL)


def metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def mean(rows: list[dict], k: str) -> float:
    return sum(r[k] for r in rows) / len(rows)


def prefs_args(a: argparse.Namespace) -> list[str]:
    """The CLI flags that build the preference pairs (hinted sampling, T 0.7), or read them
    from --pref-data."""
    if a.pref_data:
        return ["--data", str(a.pref_data)]
    return ["--task", a.pref_task, "--pref-samples", str(a.pref_samples), "--pref-hint",
            "--pref-temperature", "0.7", "--pref-pairing", a.pref_pairing]


def all_pairs(a: argparse.Namespace) -> list[dict]:
    """The pairs exactly as `prefs_args` makes the CLI build them (shared cache); the CLI
    holds out the first --val."""
    if a.pref_data:
        return load_prefs(a.pref_data)[:a.pairs_from]
    return task_prefs(base_lm(), a.pref_task, a.pairs_from, samples=a.pref_samples,
                      hint=True, temperature=0.7, pairing=a.pref_pairing)


def arithmetic_accuracy(adapter: Path | None, n: int, threads: int, level: str = "standard",
                        max_new_tokens: int = 160, offset: int = 0) -> dict:
    """Greedy accuracy on held-out (test split) problems offset..offset+n of the `level`
    task, in its own prompt; `right` lists each problem's 0/1 for paired tests."""
    torch.set_num_threads(threads)
    lm = llmlab.load(MODEL)
    if adapter is not None:
        apply_adapter(lm, adapter)
    task = ARITHMETIC_EASY if level == "easy" else ARITHMETIC
    probs = task.examples("test", offset + n)[offset:]
    ids = encode_prompts(lm, [task.format(p) for p in probs], chat=True)
    params = make_params(lm.tokenizer, max_new_tokens=max_new_tokens, temperature=0.0, seed=0,
                         stop=["<|im_end|>"])
    t0, c0 = time.perf_counter(), time.process_time()
    texts = [c.text for c in complete(lm.model, lm.tokenizer, ids, params)]
    right = [task.reward(p, t) for p, t in zip(probs, texts, strict=True)]
    return {"n": n, "offset": offset, "correct": int(sum(right)), "accuracy": sum(right) / n,
            "wilson95": wilson_interval(int(sum(right)), n), "right": [int(r) for r in right],
            "ends_in_format": sum(re.search(FORMAT, t) is not None for t in texts) / n,
            "samples": [[p.question, p.target, t] for p, t in zip(probs[:6], texts[:6],
                                                                    strict=True)],
            "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1)}


def easy_base(a: argparse.Namespace) -> dict:
    """The base model's held-out arithmetic-easy accuracy, evaluated once and cached."""
    off = f"_from{a.eval_offset}" if a.eval_offset else ""
    cache = a.out / f"arithmetic_easy_base_n{a.n_eval}{off}.json"
    if not cache.exists():
        cache.write_text(json.dumps(arithmetic_accuracy(None, a.n_eval, a.threads, "easy", 40,
                                                        a.eval_offset)))
    return json.loads(cache.read_text())


def grpo_arithmetic(a: argparse.Namespace, data: list[str], out: Path, before: dict) -> dict:
    """The grpo / grpo_format run: 2 prompts x 8 samples, T 0.7, 128 tokens, then greedy
    held-out accuracy."""
    wall = run_llmlab(["grpo", *COMMON, *data, "--max-steps", str(a.grpo_steps),
                       "--num-generations", "8", "--prompts-per-step", "2", "--temperature",
                       "0.7", "--max-new-tokens", "128", "--lr", str(a.grpo_lr), "--out",
                       str(out)], a.threads)
    after = arithmetic_accuracy(out / "final", a.n_eval, a.threads)
    m = metrics(out)
    return {"before": before, "after": after, "wall_s": round(wall, 1),
            "train_reward_per_step": [r["reward/mean"] for r in m],
            "completion_length_per_step": [r["completion_length"] for r in m]}


def format_rows(prompts: list[dict], weight: float) -> list[dict]:
    """Each prompt's verifier plus `weight` x a format reward for ending with "The answer is
    N." (weight 0: the verifier alone)."""
    return [{"prompt": p["prompt"], "verifier": p["verifier"] if weight == 0 else {
        "type": "sum", "weights": [1.0, weight],
        "parts": [p["verifier"], {"type": "format", "pattern": FORMAT}]}} for p in prompts]
