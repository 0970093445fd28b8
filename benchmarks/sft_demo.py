"""SFT / PEFT shown to work: SmolLM2-135M-Instruct on held-out trivia, before and after.

    PYTHONPATH=. python benchmarks/sft_demo.py [--methods lora,qlora,full] [--steps 150]
        [--n-eval 200] [--threads 2] [--out runs/sft_demo]

Task: the bundled `trivia` SFT data (llmlab/train/sft_data.py), whose user turn is
"Answer the trivia question with just the answer.\\nQuestion: ..." and whose assistant turn
is the bare answer. Training uses the train split only; evaluation uses --n-eval questions of
the held-out split (a seed-0 shuffle, then the first n); the split is by a hash of the
question, so none of them are trained on.
`llmlab eval --task trivia` shares this split (llmlab/data/trivia.py) but scores only the
general-knowledge lists with its own prompt; this demo keeps the SFT prompt and every list.

Metrics, greedy, batched, int8 decode (adapter merged first), max 24 new tokens:
- em: exact match of the normalised first line against any accepted answer (the required
  "just the answer" format; a full sentence that contains the answer scores 0);
- contains: the normalised accepted answer appears as whole words in the output
  (llmlab.eval.metrics.answer_match), i.e. knowledge regardless of format;
- short: outputs of at most 5 words (format compliance).
Each method trains in its own process via `llmlab sft` with the exact arguments printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from _common import emit, print_machine, stopwatch

ROOT = Path(__file__).resolve().parent.parent
COMMON = ["--model", "smollm2-135m-instruct", "--data", "trivia", "--seq-len", "256",
          "--batch-size", "4", "--warmup-steps", "10", "--eval-every", "0", "--ckpt-every", "0",
          "--log-every", "10", "--seed", "0", "--no-progress"]
METHODS = {
    "lora": ["--peft", "lora", "--lora-r", "16", "--lora-alpha", "32",
             "--target-modules", "all-linear", "--lr", "5e-4"],
    "qlora": ["--peft", "qlora", "--lora-r", "16", "--lora-alpha", "32",
              "--target-modules", "all-linear", "--lr", "5e-4"],
    "full": ["--peft", "none", "--lr", "2e-5"],
}


def evaluate(model_dir: str | None, adapter: str | None, n: int, threads: int,
             batch: int = 50) -> dict:
    import torch

    from llmlab.eval.metrics import answer_match
    from llmlab.generate.chat import render_chat
    from llmlab.generate.engine import complete, make_params
    from llmlab.lm import load_lm
    from llmlab.train.sft_data import exact_match, trivia_examples

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    items = trivia_examples("test")
    random.Random(0).shuffle(items)  # a fixed sample drawn from every list
    items = items[:n]
    lm = load_lm(model_dir or "smollm2-135m-instruct", "int8", adapter)  # LoRA merged, then int8
    tok = lm.tokenizer
    params = make_params(tok, max_new_tokens=24, temperature=0.0, seed=0)
    t0 = stopwatch()
    outs = []
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        prompts = [tok.encode(render_chat(lm, ex["messages"][:1]), allowed_special="all")
                   for ex in chunk]
        outs += [c.text.strip() for c in complete(lm.model, tok, prompts, params)]
    em = [exact_match(o, ex["answers"]) for o, ex in zip(outs, items, strict=True)]
    has = [answer_match(o, ex["answers"]) for o, ex in zip(outs, items, strict=True)]
    short = [0 < len(o.split()) <= 5 for o in outs]
    return {"n": len(items), "em": sum(em) / len(items), "contains": sum(has) / len(items),
            "short": sum(short) / len(items), "eval_s": t0(),
            "samples": [{"q": ex["question"], "a": ex["answers"][0], "out": o}
                        for ex, o in list(zip(items, outs, strict=True))[:8]]}


def train(method: str, steps: int, threads: int, out: Path) -> tuple[list[str], float, dict]:
    cmd = [sys.executable, "-m", "llmlab.cli", "sft", *COMMON, *METHODS[method],
           "--max-steps", str(steps), "--threads", str(threads), "--out", str(out)]
    print("$ " + " ".join(["python", *cmd[1:]]), flush=True)
    t0 = stopwatch()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = t0()
    if r.returncode:
        sys.exit(f"{method} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    tail = [ln for ln in r.stdout.splitlines() if "trainable params" in ln or "done:" in ln]
    print("\n".join(tail), flush=True)
    cfg = json.loads((out / "config.json").read_text())
    info = {"summary": tail}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
    losses = [r["loss"] for r in rows if "loss" in r]
    if losses:
        info["loss_first"], info["loss_last"] = losses[0], losses[-1]
    info["examples"] = cfg.get("examples")
    return cmd, wall, info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="lora,qlora,full")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/sft_demo")
    ap.add_argument("--skip-base", action="store_true")
    a = ap.parse_args()
    print_machine(threads=a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    if not a.skip_base:
        results["base"] = evaluate(None, None, a.n_eval, a.threads)
        print("base", {k: v for k, v in results["base"].items() if k != "samples"}, flush=True)
        results_path.write_text(json.dumps(results, indent=1))
    for m in [x for x in a.methods.split(",") if x]:
        run = out / m
        cmd, wall, info = train(m, a.steps, a.threads, run)
        final = run / "final"
        ev = (evaluate(str(final), None, a.n_eval, a.threads) if m == "full"
              else evaluate(None, str(final), a.n_eval, a.threads))
        results[m] = {**ev, **info, "steps": a.steps, "train_wall_s": wall,
                      "command": "PYTHONPATH=. python " + " ".join(cmd[1:])}
        print(m, {k: v for k, v in results[m].items() if k not in ("samples", "command")},
              flush=True)
        results_path.write_text(json.dumps(results, indent=1))
    emit({m: {k: v for k, v in r.items() if k != "samples"} for m, r in results.items()})


if __name__ == "__main__":
    main()
