"""Alignment shown to work on SmolLM2-135M-Instruct: reward model, DPO, PPO and GRPO.

    PYTHONPATH=. python benchmarks/align_demo.py [--stages prefs,reward,dpo,ppo,grpo]
        [--pairs-from 480] [--val 60] [--steps 40] [--ppo-steps 40] [--grpo-steps 20]
        [--n-eval 50] [--threads 1] [--out runs/align_demo]

Each training stage is one `llmlab reward|dpo|ppo|grpo` process with the exact arguments
printed; evaluation reads the Tasks (llmlab.tasks) and llmlab.tasks.metrics.
- prefs: the bundled `--pref-task` pairs as `llmlab reward|dpo --task` builds them (2 samples
  per question at T 0.7, the second hinted with the reference answer; the verifier keeps a
  right vs wrong pair); the CLI holds out the first --val.
- reward: `llmlab reward` (LoRA r 8 on q,v + a linear head); held-out pairwise accuracy with a
  95% Wilson interval, beside the length and format shortcuts (align_checks.length_check).
- dpo: `llmlab dpo` (sigmoid, β 0.1); held-out rewards/accuracy and margin; on
  arithmetic-easy-prefs also greedy held-out accuracy against the base (McNemar).
- ppo: `llmlab ppo --reward-model <reward run>` on trivia prompts (--seed 1); the reward
  model's score and the KL, first vs last quarter of the run.
- grpo: `llmlab grpo --task arithmetic`; greedy accuracy on --n-eval held-out problems
  before and after. grpo_easy: the same on arithmetic-easy with a format bonus (see its doc).
The diagnostic stages (length, reward_unhinted, perturb, reward_natural, dpo_length,
ppo_eval, grpo_format) are in benchmarks/align_checks.py. Results accumulate in
<out>/results.json; the last line printed is this run's stages' results as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import align_checks  # noqa: E402
from _align import (  # noqa: E402
    COMMON,
    all_pairs,
    arithmetic_accuracy,
    easy_base,
    format_rows,
    grpo_arithmetic,
    mean,
    metrics,
    prefs_args,
    run_llmlab,
)
from _common import emit, print_machine, stopwatch  # noqa: E402

from llmlab.align.data import task_prompts  # noqa: E402
from llmlab.tasks.metrics import mcnemar, wilson_interval  # noqa: E402


def stage_prefs(a: argparse.Namespace) -> dict:
    torch.set_num_threads(a.threads)
    t = stopwatch()
    pairs = all_pairs(a)
    return {"task": a.pref_task, "pairing": a.pref_pairing, "questions": a.pairs_from,
            "pairs": len(pairs), "wall_s": round(t(), 1)}


def _pref_run(a: argparse.Namespace, algo: str, extra: list[str]) -> tuple[Path, float, dict]:
    out = a.out / f"{algo}{a.tag}"
    wall = run_llmlab([algo, *COMMON, *prefs_args(a), "--max-examples", str(a.pairs_from),
                       "--val-examples", str(a.val), "--max-steps", str(a.steps),
                       "--batch-size", str(a.batch_size), *extra, "--out", str(out)], a.threads)
    return out, wall, json.loads((out / "eval.json").read_text())


def stage_reward(a: argparse.Namespace) -> dict:
    out, wall, ev = _pref_run(a, "reward", ["--peft", a.peft,
                                            *(["--lr", str(a.lr)] if a.lr else [])])
    m = metrics(out)
    return {**ev, "wilson95": wilson_interval(round(ev["pairwise_accuracy"] * ev["pairs"]),
                                              ev["pairs"]),
            "wall_s": round(wall, 1), "train_loss_first5": mean(m[:5], "loss"),
            "train_loss_last5": mean(m[-5:], "loss"),
            "length_check": align_checks.length_check(a, out)}


def stage_dpo(a: argparse.Namespace) -> dict:
    """DPO on the preference task; on arithmetic-easy-prefs also the policy's greedy held-out
    accuracy (problems --eval-offset.. of the test split) against the base, paired."""
    out, wall, ev = _pref_run(a, "dpo", ["--beta", "0.1"])
    n = ev["pairs"]
    res = {**ev, "wall_s": round(wall, 1),
           "logp_accuracy_wilson95": wilson_interval(round(ev["logp_accuracy"] * n), n),
           "ref_logp_accuracy_wilson95": wilson_interval(round(ev["ref_logp_accuracy"] * n), n)}
    if a.pref_task == "arithmetic-easy-prefs" and not a.pref_data:
        before = easy_base(a)
        after = arithmetic_accuracy(out / "final", a.n_eval, a.threads, "easy", 40,
                                    a.eval_offset)
        res |= {"before": before, "after": after,
                "paired": mcnemar(before["right"], after["right"])}
    return res


def stage_ppo(a: argparse.Namespace) -> dict:
    out = a.out / "ppo"
    wall = run_llmlab(["ppo", *COMMON, "--task", "trivia", "--seed", "1", "--max-examples",
                       "512", "--reward-model", str(a.out / "reward"), "--max-steps",
                       str(a.ppo_steps), "--batch-size", "8", "--max-new-tokens", "32",
                       "--lr", str(a.ppo_lr), "--out", str(out)], a.threads)
    m = metrics(out)
    q = max(1, len(m) // 4)
    return {"steps": len(m), "wall_s": round(wall, 1),
            "score_first_quarter": mean(m[:q], "reward/mean"),
            "score_last_quarter": mean(m[-q:], "reward/mean"),
            "kl_first_quarter": mean(m[:q], "kl"), "kl_last_quarter": mean(m[-q:], "kl"),
            "kl_max": max(r["kl"] for r in m),
            "length_first_quarter": mean(m[:q], "completion_length"),
            "length_last_quarter": mean(m[-q:], "completion_length"),
            "per_rollout": [{k: r[k] for k in ("step", "reward/mean", "kl", "completion_length")}
                            for r in m[::4]]}


def stage_grpo(a: argparse.Namespace) -> dict:
    before = arithmetic_accuracy(None, a.n_eval, a.threads)
    print("before:", before, flush=True)
    res = grpo_arithmetic(a, ["--task", "arithmetic"], a.out / "grpo", before)
    del res["completion_length_per_step"]
    return res


def stage_grpo_easy(a: argparse.Namespace) -> dict:
    """GRPO on `arithmetic-easy` (SmolLM2 solves about a fifth greedily, so groups of 8 samples
    differ in reward): 40 new tokens at T 0.6, the numeric check plus --grpo-format-weight for
    ending with "The answer is N." (a bonus paid regardless of correctness was hacked; 0 trains
    on the check alone), --grpo-prompts x 8 samples per rollout, --grpo-iterations passes.
    Accuracy: greedy, the numeric check alone, on --n-eval held-out problems; exact McNemar."""
    out = a.out / f"grpo_easy{a.tag}"
    data = a.out / f"arithmetic_easy_format{a.tag}.jsonl"
    rows = format_rows(task_prompts("arithmetic-easy", 1024), a.grpo_format_weight)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = easy_base(a)
    print("before:", {k: v for k, v in before.items() if k != "right"}, flush=True)
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = run_llmlab(["grpo", *COMMON, "--data", str(data), "--max-steps", str(a.grpo_steps),
                       "--num-generations", "8", "--prompts-per-step", str(a.grpo_prompts),
                       "--temperature", "0.6", "--max-new-tokens", "40", "--iterations",
                       str(a.grpo_iterations), "--lr", str(a.grpo_lr), "--seed",
                       str(a.grpo_seed), "--warmup-steps", "2", "--out", str(out)], a.threads)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = arithmetic_accuracy(out / "final", a.n_eval, a.threads, "easy", 40, a.eval_offset)
    m = metrics(out)
    also = {}  # earlier runs' adapters on the same held-out problems (--also-eval)
    for name in filter(None, a.also_eval.split(",")):
        res = arithmetic_accuracy(a.out / name / "final", a.n_eval, a.threads, "easy", 40,
                                  a.eval_offset)
        also[name] = {"after": res, "paired": mcnemar(before["right"], res["right"])}
    return {"train_wall_s": round(wall, 1), "seed": a.grpo_seed, "also": also,
            "train_cpu_s": round(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime, 1),
            "before": before, "after": after, "paired": mcnemar(before["right"], after["right"]),
            "train_reward_per_step": [round(r["reward/mean"], 3) for r in m],
            "frac_zero_std_per_step": [r["frac_reward_zero_std"] for r in m],
            "completion_length_per_step": [round(r["completion_length"], 1) for r in m]}


STAGES = {"prefs": stage_prefs, "reward": stage_reward, "dpo": stage_dpo, "ppo": stage_ppo,
          "grpo": stage_grpo, "grpo_easy": stage_grpo_easy, **align_checks.STAGES}
TAGGED = ("grpo_easy", "prefs", "reward", "length", "reward_unhinted", "perturb",
          "reward_natural", "dpo", "dpo_length")  # their results key carries --tag


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    arg = ap.add_argument
    arg("--stages", default="prefs,reward,dpo,ppo,grpo", help=f"of: {', '.join(STAGES)}")
    arg("--pairs-from", type=int, default=480, help="questions sampled for pairs")
    arg("--val", type=int, default=60, help="held-out pairs")
    arg("--steps", type=int, default=40, help="reward and DPO steps")
    arg("--batch-size", type=int, default=4, help="reward model pairs per step")
    arg("--peft", default="lora", help="reward model: lora (r 8 on q,v) | none")
    arg("--lr", type=float, help="reward model lr (default: the CLI's)")
    arg("--pref-task", default="trivia-prefs", help="preference task for prefs..dpo")
    arg("--pref-samples", type=int, default=2, help="samples per prompt")
    arg("--pref-data", type=Path, help="preference JSONL instead of --pref-task (the perturb "
        "stage writes it)")
    arg("--pref-pairing", default="extremes", help="extremes | length-matched")
    arg("--ppo-steps", type=int, default=40)
    arg("--ppo-lr", type=float, default=1e-4, help="LoRA lr for PPO")
    arg("--ppo-eval-n", type=int, default=64, help="unseen prompts for ppo_eval")
    arg("--grpo-steps", type=int, default=20)
    arg("--grpo-prompts", type=int, default=4, help="prompts per rollout in grpo_easy (x 8)")
    arg("--grpo-iterations", type=int, default=2,
        help="optimizer passes per rollout in grpo_easy (1 skips the old-policy forward)")
    arg("--grpo-format-weight", type=float, default=0.2,
        help="grpo_easy's bonus for ending with 'The answer is N.' (0: none)")
    arg("--tag", default="", help="suffix for the run folder and results key of grpo_easy, "
        "reward and the pair stages, so a second attempt keeps the first")
    arg("--grpo-lr", type=float, default=1e-4, help="LoRA lr for GRPO")
    arg("--n-eval", type=int, default=50, help="held-out arithmetic problems")
    arg("--eval-offset", type=int, default=0,
        help="evaluate held-out problems offset..offset+n-eval (fresh ones for a confirmation)")
    arg("--grpo-seed", type=int, default=0, help="grpo_easy's training seed")
    arg("--also-eval", default="", help="grpo_easy: earlier run folders (under --out) whose "
        "adapters are also scored on the same problems, comma-separated")
    arg("--threads", type=int, default=1)
    arg("--out", type=Path, default=Path("runs/align_demo"))
    return ap.parse_args()


def main() -> None:
    a = parse_args()
    bad = [s for s in a.stages.split(",") if s not in STAGES]
    if bad:
        raise SystemExit(f"unknown stage {bad[0]!r}; valid: {', '.join(STAGES)}")
    print_machine(threads=a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    res_path = a.out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    keys = []
    for name in a.stages.split(","):
        key = name + a.tag if name in TAGGED else name
        keys.append(key)
        results[key] = STAGES[name](a)
        print(key, json.dumps(results[key], indent=1), flush=True)
        res_path.write_text(json.dumps(results, indent=1) + "\n")
    emit({"stages": a.stages.split(","), "results_file": str(res_path),
          "results": {k: results[k] for k in keys}})


if __name__ == "__main__":
    main()
