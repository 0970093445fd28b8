"""GRPO's rollout on the CPU: `llmlab.align.rollout.sample` with SmolLM2-135M-Instruct,
P prompts x G samples each, timed end to end (prefill + decode + padding).

The tree that runs is the one on PYTHONPATH, so two checkouts compare side by side:

    PYTHONPATH=/path/to/tree python benchmarks/grpo_rollout_cpu.py --threads 1

Prints the machine line, one line per repeat, and a final JSON line (median seconds, and a
hash of the sampled ids: the same seed gives the same tokens in both trees).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import emit, machine, print_machine, stopwatch  # noqa: E402

import llmlab  # noqa: E402
from llmlab.align.data import task_prompts  # noqa: E402
from llmlab.align.rollout import sample  # noqa: E402
from llmlab.generate.chat import template_for  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--per-prompt", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    print_machine(threads=a.threads)
    torch.set_num_threads(a.threads)
    lm = llmlab.load("smollm2-135m-instruct")
    tpl = template_for(lm)
    picks = task_prompts("arithmetic", a.prompts, seed=0)

    def run(seed: int) -> tuple[float, torch.Tensor]:
        t = stopwatch()
        r = sample(lm.model, lm.tokenizer, tpl, picks, a.per_prompt, a.new_tokens, 1.0, seed)
        return t(), r.ids

    run(0)  # warm-up: allocator, thread pool
    times, digest = [], hashlib.sha256()
    for k in range(a.repeat):
        dt, ids = run(k + 1)
        times.append(dt)
        digest.update(ids.numpy().tobytes())
        print(f"repeat {k + 1}: {dt:.3f} s")
    print(f"# {machine()}, {a.threads} threads, torch {torch.__version__}, llmlab from "
          f"{os.path.dirname(os.path.dirname(llmlab.__file__))}")
    emit({"bench": "grpo_rollout_cpu", "prompts": a.prompts, "per_prompt": a.per_prompt,
          "new_tokens": a.new_tokens, "threads": a.threads, "seconds": times,
          "median_s": statistics.median(times), "ids_sha256": digest.hexdigest()[:16]})


if __name__ == "__main__":
    main()
