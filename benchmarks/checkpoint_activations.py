"""Activation checkpointing on the RL page's GRPO training step: peak memory and step time,
with and without, side by side in one invocation.

The step is the page's: SmolLM2-135M fp32 with LoRA r=8 on q_proj/v_proj, 32 sequences of
111 tokens (4 prompts x 8 completions, as its first rollout), GRPO's log-probs at the
sampling temperature, backward. Each variant runs in its own process (so each peak RSS is
its own), the two alternating `--rounds` times; the time is the median of the steps after
the first of each process.

    python benchmarks/checkpoint_activations.py --threads 1 --steps 3 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import emit, print_machine, stopwatch  # noqa: E402


def worker(ckpt: bool, steps: int, threads: int) -> dict:
    import torch

    import llmlab
    from llmlab.align.common import token_logprobs
    from llmlab.model.transformer import checkpoint_blocks
    from llmlab.peft.lora import LoraConfig, inject_lora

    torch.set_num_threads(threads)
    lm = llmlab.load("smollm2-135m-instruct")
    model = lm.model.train().requires_grad_(False)
    torch.manual_seed(0)  # LoRA's A is drawn at random: the same in both processes
    inject_lora(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    checkpoint_blocks(model, ckpt)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, lm.model.cfg.vocab_size, (32, 111), generator=g)
    attn = torch.ones_like(ids)
    attn[:, 100:] = torch.arange(11)[None] < torch.randint(0, 12, (32, 1), generator=g)
    times, grad = [], 0.0
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        t = stopwatch()
        logp = token_logprobs(model, ids, attn, 0.6)
        (-(logp * attn[:, 1:]).sum() / attn[:, 1:].sum()).backward()
        times.append(t())
        grad = float(sum(p.grad.double().square().sum() for p in model.parameters()
                         if p.grad is not None).sqrt())
    hwm = next(int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines()
               if x.startswith("VmHWM"))
    return {"times": times, "max_rss_gib": hwm / 2**20, "grad_norm": grad}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="fwd+bwd per process (first untimed)")
    ap.add_argument("--rounds", type=int, default=2, help="processes per variant, alternating")
    ap.add_argument("--worker", choices=("plain", "ckpt"), default=None)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker == "ckpt", a.steps, a.threads)))
        return
    print_machine(threads=a.threads)
    got: dict[str, list[dict]] = {"plain": [], "ckpt": []}
    for _ in range(a.rounds):
        for v in got:
            out = subprocess.run([sys.executable, __file__, "--worker", v, "--threads",
                                  str(a.threads), "--steps", str(a.steps)], check=True,
                                 capture_output=True, text=True).stdout
            got[v].append(json.loads(out.strip().splitlines()[-1]))
            print(f"{v}: {got[v][-1]}", file=sys.stderr, flush=True)
    res = {v: {"step_s": statistics.median(t for r in rs for t in r["times"][1:]),
               "max_rss_gib": max(r["max_rss_gib"] for r in rs),
               "grad_norm": rs[0]["grad_norm"]} for v, rs in got.items()}
    res["time_ratio"] = res["ckpt"]["step_s"] / res["plain"]["step_s"]
    res["rss_ratio"] = res["ckpt"]["max_rss_gib"] / res["plain"]["max_rss_gib"]
    res["same_gradients"] = res["ckpt"]["grad_norm"] == res["plain"]["grad_norm"]
    emit(res)


if __name__ == "__main__":
    main()
