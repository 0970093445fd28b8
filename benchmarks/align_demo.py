"""Alignment shown to work on SmolLM2-135M-Instruct: reward model, DPO, PPO and GRPO.

    PYTHONPATH=. python benchmarks/align_demo.py [--stages prefs,reward,dpo,ppo,grpo]
        [--pairs-from 480] [--val 60] [--steps 40] [--ppo-steps 40] [--grpo-steps 20]
        [--n-eval 50] [--threads 1] [--out runs/align_demo]

Data (`prefs`): the bundled `trivia-prefs` task, as `llmlab reward|dpo --task trivia-prefs`
builds it: for each of the first --pairs-from trivia questions, SmolLM2 samples 2 answers at
temperature 0.7, the second with the reference answer as a hint in its prompt (STaR-style);
the verifier (normalised match against the accepted answers) keeps the question when exactly
one answer is right, chosen = right, rejected = wrong, both in SmolLM2's own words. The first
--val pairs (their questions) are held out by the CLI; the rest train.

- reward: `llmlab reward` (LoRA r 8 on q,v + a linear head, Bradley-Terry); metric: held-out
  pairwise accuracy, with a 95% Wilson interval. `length` re-scores the held-out pairs beside
  the shortcuts a reward model could learn instead (shorter wins; "The answer is N." wins).
  --pref-task arithmetic-easy-prefs --pref-pairing length-matched builds pairs with little
  length cue; `reward_unhinted` then scores that model on pairs of unhinted samples for
  held-out (test split) problems.
- dpo: `llmlab dpo` (sigmoid, β 0.1; reference = the base, adapters disabled); metrics on the
  held-out pairs: rewards/accuracy and rewards/margin (0 before training, since π = π_ref)
  and how often the policy vs the base gives the chosen answer the higher log-probability.
- ppo: `llmlab ppo --reward-model <reward run>` on trivia prompts from another shuffle
  (--seed 1); metric: the reward model's score of fresh rollouts, first vs last quarter of
  the run, and the KL to the reference (k1, summed over each completion).
- grpo: `llmlab grpo --task arithmetic`; metric: greedy accuracy on --n-eval problems of the
  held-out arithmetic split, before and after (adapter merged).
Each training stage is one `llmlab` process with the exact arguments printed.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
COMMON = ["--model", MODEL, "--warmup-steps", "5", "--log-every", "1", "--no-progress",
          "--no-tensorboard"]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return c - h, c + h


def llmlab(args: list[str], threads: int) -> float:
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
    import llmlab

    return llmlab.load(MODEL)


def metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def prefs_args(a: argparse.Namespace) -> list[str]:
    """The CLI flags that build the preference pairs (hinted sampling, T 0.7), or read them
    from --pref-data."""
    if a.pref_data:
        return ["--data", str(a.pref_data)]
    return ["--task", a.pref_task, "--pref-samples", str(a.pref_samples), "--pref-hint",
            "--pref-temperature", "0.7", "--pref-pairing", a.pref_pairing]


def all_pairs(a: argparse.Namespace) -> list[dict]:
    """The pairs exactly as `prefs_args` makes the CLI build them (shared cache)."""
    from llmlab.align.data import load_prefs, task_prefs

    if a.pref_data:
        return load_prefs(a.pref_data)[:a.pairs_from]
    return task_prefs(base_lm(), a.pref_task, a.pairs_from, samples=a.pref_samples,
                      hint=True, temperature=0.7, pairing=a.pref_pairing)


def natural_arith_pairs(a: argparse.Namespace) -> list[dict]:
    """The length-matched arithmetic-easy-prefs pairs (4 samples, half hinted, T 0.7) of the
    first --pairs-from train problems: the `_arith` reward model's data."""
    from llmlab.align.data import task_prefs

    return task_prefs(base_lm(), "arithmetic-easy-prefs", a.pairs_from, samples=4,
                      hint=True, temperature=0.7, pairing="length-matched")


def stage_perturb(a: argparse.Namespace) -> dict:
    """Writes --pref-data: each natural pair's chosen (right) sample against itself with its
    answer changed (llmlab.align.data.perturb_answer), so the two sides differ only in
    whether the sum is right; same question order, so the same problems are held out."""
    from llmlab.align.data import perturbed_pairs, task_prompts
    from llmlab.align.rewards import score_many

    task = {p["prompt"]: p for p in task_prompts("arithmetic-easy", a.pairs_from)}
    nat = natural_arith_pairs(a)
    prompts = [task[p["prompt"]] for p in nat]
    chosen = [p["chosen"] for p in nat]
    rows = perturbed_pairs(prompts, chosen, score_many(chosen, [p["verifier"] for p in prompts]),
                           1)
    a.pref_data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"natural_pairs": len(nat), "perturbed_pairs": len(rows),
            "examples": [[r["chosen"], r["rejected"]] for r in rows[:4]]}


def stage_reward_natural(a: argparse.Namespace) -> dict:
    """The reward model in reward{tag} on the natural length-matched held-out pairs (the first
    --val of natural_arith_pairs, whose problems the perturbed data also holds out)."""
    pairs = natural_arith_pairs(a)[:a.val]
    return cue_baselines(pairs, score_pairs(a.out / f"reward{a.tag}", pairs, a.threads))


def stage_prefs(a: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    pairs = all_pairs(a)
    return {"task": a.pref_task, "pairing": a.pref_pairing, "questions": a.pairs_from,
            "pairs": len(pairs), "wall_s": round(time.perf_counter() - t0, 1)}


def val_pairs(a: argparse.Namespace) -> list[dict]:
    """The held-out pairs, as the CLI splits them (the first --val of the cached set)."""
    return all_pairs(a)[:a.val]


def train_pairs(a: argparse.Namespace) -> list[dict]:
    return all_pairs(a)[a.val:]


def score_pairs(run: Path, pairs: list[dict], threads: int) -> dict:
    """The reward model in `run` on each pair: `right` (chosen scored higher), and both sides'
    completion lengths in tokens (`nc`, `nr`)."""
    import torch

    from llmlab.align.data import pref_tensors
    from llmlab.align.reward import load_reward_model
    from llmlab.generate.chat import template_for

    torch.set_num_threads(threads)
    rm = load_reward_model(run)
    lm = base_lm()
    t = pref_tensors(lm.tokenizer, template_for(lm), pairs, 256)
    with torch.no_grad():
        rc = torch.cat([rm.score(t["chosen_ids"][i:i + 8], t["chosen_mask"][i:i + 8])
                        for i in range(0, len(pairs), 8)])
        rr = torch.cat([rm.score(t["rejected_ids"][i:i + 8], t["rejected_mask"][i:i + 8])
                        for i in range(0, len(pairs), 8)])
    return {"right": (rc > rr).tolist(), "nc": t["chosen_cmask"].sum(1),
            "nr": t["rejected_cmask"].sum(1)}


def cue_baselines(pairs: list[dict], sc: dict) -> dict:
    """The reward model's accuracy beside two shortcuts it could have learned instead: "the
    shorter answer wins" and "the answer that ends 'The answer is N.' wins" (ties split 50/50),
    and its accuracy on the pairs where each shortcut cannot help."""
    right, nc, nr = sc["right"], sc["nc"], sc["nr"]
    fc = [re.search(FORMAT, p["chosen"]) is not None for p in pairs]
    fr = [re.search(FORMAT, p["rejected"]) is not None for p in pairs]
    n = len(pairs)

    def acc(keep: list[bool]) -> tuple[float | None, int]:
        v = [r for r, k in zip(right, keep, strict=True) if k]
        return (sum(v) / len(v) if v else None, len(v))

    longer = (nc > nr).tolist()
    return {"rm_accuracy": sum(right) / n, "wilson95": wilson(int(sum(right)), n), "pairs": n,
            "shorter_wins_ties_half": float((nc < nr).float().mean()
                                            + (nc == nr).float().mean() / 2),
            "format_wins_ties_half": (sum(c and not r for c, r in zip(fc, fr, strict=True))
                                      + sum(c == r for c, r in zip(fc, fr, strict=True)) / 2
                                      ) / n,
            "rm_accuracy_chosen_longer": acc(longer),
            "rm_accuracy_chosen_not_longer": acc([not x for x in longer]),
            "rm_accuracy_same_format": acc([c == r for c, r in zip(fc, fr, strict=True)])}


def length_check(a: argparse.Namespace, run: Path) -> dict:
    """Chosen answers are shorter than rejected ones more often than not (a hinted sample tends
    to state the answer and stop), so "prefer the shorter" is a baseline to beat. Scores the
    held-out pairs again and splits them by which side is longer (in tokens)."""
    from llmlab.align.data import pref_tensors
    from llmlab.generate.chat import template_for

    pairs = all_pairs(a)
    val = pairs[:a.val]
    sc = score_pairs(run, val, a.threads)
    cues = cue_baselines(val, sc)
    nc, nr = sc["nc"], sc["nr"]
    lm = base_lm()
    tt = pref_tensors(lm.tokenizer, template_for(lm), pairs[a.val:], 256)
    tc, tr = tt["chosen_cmask"].sum(1), tt["rejected_cmask"].sum(1)
    return {"rm_accuracy": cues["rm_accuracy"],
            "shorter_wins_baseline": float((nc <= nr).float().mean()),  # ties counted as wins
            "length_ties": float((nc == nr).float().mean()),  # mostly both cut at the cap
            "shorter_wins_ties_half": cues["shorter_wins_ties_half"],
            "train_shorter_wins_ties_half": float((tc < tr).float().mean()
                                                  + (tc == tr).float().mean() / 2),
            "rm_accuracy_chosen_longer": cues["rm_accuracy_chosen_longer"],
            "rm_accuracy_chosen_not_longer": cues["rm_accuracy_chosen_not_longer"],
            "cues": cues}


def stage_reward_unhinted(a: argparse.Namespace) -> dict:
    """The arithmetic reward model on pairs it could not have shortcuts for: --n-eval
    arithmetic-easy problems of the held-out (test) split, 4 unhinted samples each (T 0.7),
    paired right vs wrong with length matching. So no sample saw a hint, no question was
    trained on, and the lengths are close."""
    import torch

    from llmlab.align.data import load_prefs, make_prefs, task_prompts

    torch.set_num_threads(a.threads)
    cache = a.out / f"arith_unhinted_pairs_n{a.n_eval}.jsonl"
    if not cache.exists():
        pairs = make_prefs(base_lm(), task_prompts("arithmetic-easy", a.n_eval,
                                                            split="test"),
                           samples=4, max_new_tokens=40, temperature=0.7, seed=1,
                           pairing="length-matched")
        cache.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    pairs = load_prefs(cache)
    return {"problems": a.n_eval,
            **cue_baselines(pairs, score_pairs(a.out / f"reward{a.tag}", pairs, a.threads))}


def stage_reward(a: argparse.Namespace) -> dict:
    out = a.out / f"reward{a.tag}"
    wall = llmlab(["reward", *COMMON, *prefs_args(a), "--max-examples", str(a.pairs_from),
                   "--val-examples", str(a.val), "--max-steps", str(a.steps),
                   "--batch-size", str(a.batch_size), "--peft", a.peft,
                   *(["--lr", str(a.lr)] if a.lr else []), "--out", str(out)], a.threads)
    ev = json.loads((out / "eval.json").read_text())
    k = round(ev["pairwise_accuracy"] * ev["pairs"])
    m = metrics(out)
    return {**ev, "wilson95": wilson(k, ev["pairs"]), "wall_s": round(wall, 1),
            "train_loss_first5": _mean(m[:5], "loss"), "train_loss_last5": _mean(m[-5:], "loss"),
            "length_check": length_check(a, out)}


def stage_dpo(a: argparse.Namespace) -> dict:
    """DPO on the preference task; on arithmetic-easy-prefs also the policy's greedy held-out
    accuracy (problems --eval-offset.. of the test split) against the base, paired."""
    out = a.out / f"dpo{a.tag}"
    wall = llmlab(["dpo", *COMMON, *prefs_args(a), "--max-examples", str(a.pairs_from),
                   "--val-examples", str(a.val), "--max-steps", str(a.steps),
                   "--batch-size", str(a.batch_size), "--beta", "0.1", "--out", str(out)],
                  a.threads)
    ev = json.loads((out / "eval.json").read_text())
    n = ev["pairs"]
    res = {**ev, "wall_s": round(wall, 1),
           "logp_accuracy_wilson95": wilson(round(ev["logp_accuracy"] * n), n),
           "ref_logp_accuracy_wilson95": wilson(round(ev["ref_logp_accuracy"] * n), n)}
    if a.pref_task == "arithmetic-easy-prefs" and not a.pref_data:
        before = easy_base(a)
        after = arithmetic_accuracy(out / "final", a.n_eval, a.threads, "easy", 40,
                                    a.eval_offset)
        res |= {"before": before, "after": after,
                "paired": mcnemar(before["right"], after["right"])}
    return res


def _mean(rows: list[dict], k: str) -> float:
    return sum(r[k] for r in rows) / len(rows)


def stage_dpo_length(a: argparse.Namespace) -> dict:
    """The DPO policy's held-out implicit-reward accuracy, split by which side is longer (as
    length_check does for the reward model): a summed log-ratio also grows with length."""
    import torch

    import llmlab
    from llmlab.align.data import pref_tensors
    from llmlab.align.dpo import sequence_logprob
    from llmlab.generate.chat import template_for
    from llmlab.peft.model import disable_adapters, load_adapter

    torch.set_num_threads(a.threads)
    pairs = val_pairs(a)
    lm = llmlab.load(MODEL)
    t = pref_tensors(lm.tokenizer, template_for(lm), pairs, 256)
    pm = load_adapter(lm.model, a.out / f"dpo{a.tag}" / "final").eval()
    with torch.no_grad():
        def logps(side: str) -> torch.Tensor:
            return torch.cat([sequence_logprob(pm, t[f"{side}_ids"][i:i + 8],
                                               t[f"{side}_mask"][i:i + 8],
                                               t[f"{side}_cmask"][i:i + 8])
                              for i in range(0, len(pairs), 8)])
        pc, pr = logps("chosen"), logps("rejected")
        with disable_adapters(pm):
            rc, rr = logps("chosen"), logps("rejected")
    right = ((pc - rc) > (pr - rr)).tolist()
    longer = (t["chosen_cmask"].sum(1) > t["rejected_cmask"].sum(1)).tolist()
    split = {g: [r for r, x in zip(right, longer, strict=True) if x == g] for g in (True, False)}
    return {"rewards_accuracy": sum(right) / len(right),
            "accuracy_chosen_longer": (sum(split[True]) / max(1, len(split[True])),
                                       len(split[True])),
            "accuracy_chosen_not_longer": (sum(split[False]) / max(1, len(split[False])),
                                           len(split[False]))}


def stage_ppo(a: argparse.Namespace) -> dict:
    out = a.out / "ppo"
    wall = llmlab(["ppo", *COMMON, "--task", "trivia", "--seed", "1", "--max-examples", "512",
                   "--reward-model", str(a.out / "reward"), "--max-steps", str(a.ppo_steps),
                   "--batch-size", "8", "--max-new-tokens", "32", "--lr", str(a.ppo_lr),
                   "--out", str(out)],
                  a.threads)
    m = metrics(out)
    q = max(1, len(m) // 4)
    return {"steps": len(m), "wall_s": round(wall, 1),
            "score_first_quarter": _mean(m[:q], "reward/mean"),
            "score_last_quarter": _mean(m[-q:], "reward/mean"),
            "kl_first_quarter": _mean(m[:q], "kl"), "kl_last_quarter": _mean(m[-q:], "kl"),
            "kl_max": max(r["kl"] for r in m),
            "length_first_quarter": _mean(m[:q], "completion_length"),
            "length_last_quarter": _mean(m[-q:], "completion_length"),
            "per_rollout": [{k: r[k] for k in ("step", "reward/mean", "kl",
                                                "completion_length")}
                            for r in m[::4]]}


def stage_ppo_eval(a: argparse.Namespace) -> dict:
    """The reward model's mean score on n trivia prompts that neither the reward model nor PPO
    saw (a third shuffle), sampled as in training (T 0.7, 32 tokens, same seed), from the
    base model and from the PPO policy (adapter merged)."""
    import torch

    import llmlab
    from llmlab.align.data import pad_right, prompt_ids, task_prompts
    from llmlab.align.reward import load_reward_model
    from llmlab.generate.chat import template_for
    from llmlab.generate.engine import complete, make_params
    from llmlab.peft.model import apply_adapter

    torch.set_num_threads(a.threads)
    n = a.ppo_eval_n
    seen = {p["prompt"] for p in task_prompts("trivia", a.pairs_from, seed=0)}
    seen |= {p["prompt"] for p in task_prompts("trivia", 512, seed=1)}
    prompts = [p for p in task_prompts("trivia", 4 * n, seed=2) if p["prompt"] not in seen][:n]
    rm = load_reward_model(a.out / "reward")
    out = {"prompts": len(prompts)}
    for name, adapter in (("base", None), ("ppo", a.out / "ppo" / "final")):
        lm = llmlab.load(MODEL)
        if adapter is not None:
            apply_adapter(lm, adapter)
        tpl = template_for(lm)
        ids = [prompt_ids(lm.tokenizer, tpl, p["prompt"]) for p in prompts]
        params = make_params(lm.tokenizer, max_new_tokens=32, temperature=0.7, seed=0,
                             stop=list(tpl.stop))
        comps = complete(lm.model, lm.tokenizer, ids, params)
        seqs = [i + c.token_ids + ([c.stop_token] if c.stop_token is not None else [])
                for i, c in zip(ids, comps, strict=True)]
        x, m = pad_right(seqs)
        with torch.no_grad():
            sc = torch.cat([rm.score(x[i:i + 16], m[i:i + 16]) for i in range(0, len(x), 16)])
        out[name] = {"rm_score": float(sc.mean()), "rm_score_std": float(sc.std()),
                     "scores": sc.tolist(),
                     "tokens": sum(len(c.token_ids) for c in comps) / len(comps),
                     "samples": [c.text for c in comps[:4]],
                     "samples_all": [c.text for c in comps]}
    d = torch.tensor(out["ppo"]["scores"]) - torch.tensor(out["base"]["scores"])
    se = float(d.std() / len(d) ** 0.5)
    out["paired_diff"] = {"mean": float(d.mean()), "se": se,
                          # two-sided, normal approximation to the paired t-test (n >= 64)
                          "p_value": math.erfc(abs(float(d.mean())) / se / math.sqrt(2)),
                          "ppo_higher": int((d > 0).sum()), "base_higher": int((d < 0).sum()),
                          "identical_samples": sum(
                              x == y for x, y in zip(out["base"]["samples_all"],
                                                     out["ppo"]["samples_all"], strict=True))}
    for k in ("base", "ppo"):
        out[k].pop("samples_all")
    return out


def arithmetic_accuracy(adapter: Path | None, n: int, threads: int, level: str = "standard",
                        max_new_tokens: int = 160, offset: int = 0) -> dict:
    """Greedy accuracy on held-out (test split) problems offset..offset+n of `level`, with the
    prompt the matching task trains on; `right` lists each problem's 0/1 for paired tests."""
    import torch

    import llmlab
    from llmlab.align.data import ARITH_EASY_PROMPT, ARITH_PROMPT
    from llmlab.align.rewards import score_many
    from llmlab.eval.datasets import arithmetic_problems
    from llmlab.generate.chat import encode_prompts
    from llmlab.generate.engine import complete, make_params

    torch.set_num_threads(threads)
    lm = llmlab.load(MODEL)
    if adapter is not None:
        from llmlab.peft.model import apply_adapter

        apply_adapter(lm, adapter)
    probs = arithmetic_problems(offset + n, split="test", level=level)[offset:]
    tmpl = ARITH_EASY_PROMPT if level == "easy" else ARITH_PROMPT
    ids = encode_prompts(lm, [tmpl.format(q=p.question) for p in probs], chat=True)
    params = make_params(lm.tokenizer, max_new_tokens=max_new_tokens, temperature=0.0, seed=0,
                         stop=["<|im_end|>"])
    t0, c0 = time.perf_counter(), time.process_time()
    texts = [c.text for c in complete(lm.model, lm.tokenizer, ids, params)]
    right = score_many(texts, [{"type": "numeric", "answer": p.target} for p in probs])
    return {"n": n, "offset": offset, "correct": int(sum(right)), "accuracy": sum(right) / n,
            "wilson95": wilson(int(sum(right)), n), "right": [int(r) for r in right],
            "ends_in_format": sum(re.search(FORMAT, t) is not None for t in texts) / n,
            "samples": [[p.question, p.target, t] for p, t in zip(probs[:6], texts[:6],
                                                                    strict=True)],
            "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1)}


def mcnemar(before: list[int], after: list[int]) -> dict:
    """Exact two-sided McNemar test on paired 0/1 outcomes (a binomial test on the
    discordant pairs), and the accuracy gain with a 95% Wald interval on paired diffs."""
    b = sum(1 for x, y in zip(before, after, strict=True) if x and not y)  # lost
    c = sum(1 for x, y in zip(before, after, strict=True) if y and not x)  # gained
    k, m = min(b, c), b + c
    p = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2 ** m) if m else 1.0
    n = len(before)
    d = [y - x for x, y in zip(before, after, strict=True)]
    mean = sum(d) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n)
    return {"gained": c, "lost": b, "p_value": p, "gain": mean,
            "gain_ci95": (mean - 1.96 * se, mean + 1.96 * se)}


def stage_grpo(a: argparse.Namespace) -> dict:
    out = a.out / "grpo"
    before = arithmetic_accuracy(None, a.n_eval, a.threads)
    print("before:", before, flush=True)
    res = _grpo_arithmetic(a, ["--task", "arithmetic"], out, before)
    del res["completion_length_per_step"]
    return res


def _grpo_arithmetic(a: argparse.Namespace, data: list[str], out: Path, before: dict) -> dict:
    """The stage_grpo / stage_grpo_format run: 2 prompts x 8 samples, T 0.7, 128 tokens, then
    greedy held-out accuracy."""
    wall = llmlab(["grpo", *COMMON, *data, "--max-steps", str(a.grpo_steps),
                   "--num-generations", "8", "--prompts-per-step", "2", "--temperature", "0.7",
                   "--max-new-tokens", "128", "--lr", str(a.grpo_lr), "--out", str(out)],
                  a.threads)
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


def stage_length(a: argparse.Namespace) -> dict:
    return length_check(a, a.out / f"reward{a.tag}")


FORMAT = r"answer is \$?-?[0-9][0-9,]*(\.[0-9]+)?\.?\s*$"  # ends by stating its answer


def stage_grpo_format(a: argparse.Namespace) -> dict:
    """GRPO as stage_grpo, with the answer check plus a format reward (0.5 for ending with
    "The answer is N."): most plain groups are all wrong (no signal), and most completions
    run past the length budget before stating an answer. Accuracy is still the numeric check
    alone, on the same held-out problems."""
    from llmlab.align.data import task_prompts

    out = a.out / "grpo_format"
    data = a.out / "arithmetic_format.jsonl"
    rows = format_rows(task_prompts("arithmetic", 256), 0.5)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = json.loads((a.out / "results.json").read_text())["grpo"]["before"]
    return _grpo_arithmetic(a, ["--data", str(data)], out, before)


def easy_base(a: argparse.Namespace) -> dict:
    """The base model's held-out arithmetic-easy accuracy, evaluated once and cached."""
    off = f"_from{a.eval_offset}" if a.eval_offset else ""
    cache = a.out / f"arithmetic_easy_base_n{a.n_eval}{off}.json"
    if not cache.exists():
        cache.write_text(json.dumps(arithmetic_accuracy(None, a.n_eval, a.threads, "easy", 40,
                                                        a.eval_offset)))
    return json.loads(cache.read_text())


def stage_grpo_easy(a: argparse.Namespace) -> dict:
    """GRPO on `arithmetic-easy` (one small add/subtract step; SmolLM2 solves about a fifth
    greedily, so groups of 8 samples differ in reward) with a short one-line answer (40 new
    tokens at T 0.6: at T 0.8 samples were right only ~5% of the time), the numeric check
    plus a 0.2 format reward for ending with "The answer is N.", --grpo-prompts x 8 samples
    per rollout, --grpo-iterations optimizer passes per rollout. Accuracy: greedy, the
    numeric check alone, on --n-eval problems of the held-out (test) split, which training
    never draws from (the split is by a hash of the question text); exact McNemar test."""
    import resource

    from llmlab.align.data import task_prompts

    out = a.out / f"grpo_easy{a.tag}"
    data = a.out / f"arithmetic_easy_format{a.tag}.jsonl"
    # A format bonus paid regardless of correctness was hacked (attempt 2: "The answer is N."
    # with a wrong N); --grpo-format-weight 0 trains on the numeric check alone.
    rows = format_rows(task_prompts("arithmetic-easy", 1024), a.grpo_format_weight)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = easy_base(a)
    print("before:", {k: v for k, v in before.items() if k != "right"}, flush=True)
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = llmlab(["grpo", *COMMON, "--data", str(data), "--max-steps", str(a.grpo_steps),
                   "--num-generations", "8", "--prompts-per-step", str(a.grpo_prompts),
                   "--temperature", "0.6",
                   "--max-new-tokens", "40", "--iterations", str(a.grpo_iterations),
                   "--lr", str(a.grpo_lr), "--seed", str(a.grpo_seed),
                   "--warmup-steps", "2", "--out", str(out)], a.threads)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = arithmetic_accuracy(out / "final", a.n_eval, a.threads, "easy", 40, a.eval_offset)
    m = metrics(out)
    # Secondary: earlier runs' adapters on the same held-out problems (--also-eval).
    also = {}
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


STAGES = {"prefs": stage_prefs, "reward": stage_reward, "length": stage_length,
          "reward_unhinted": stage_reward_unhinted, "perturb": stage_perturb,
          "reward_natural": stage_reward_natural, "dpo": stage_dpo,
          "dpo_length": stage_dpo_length, "ppo": stage_ppo,
          "ppo_eval": stage_ppo_eval, "grpo": stage_grpo, "grpo_format": stage_grpo_format,
          "grpo_easy": stage_grpo_easy}


TAGGED = ("grpo_easy", "prefs", "reward", "length", "reward_unhinted", "perturb",
          "reward_natural", "dpo", "dpo_length")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stages", default="prefs,reward,dpo,ppo,grpo")
    ap.add_argument("--pairs-from", type=int, default=480, help="trivia questions sampled")
    ap.add_argument("--val", type=int, default=60, help="held-out pairs")
    ap.add_argument("--steps", type=int, default=40, help="reward and DPO steps")
    ap.add_argument("--batch-size", type=int, default=4, help="reward model pairs per step")
    ap.add_argument("--peft", default="lora", help="reward model: lora (r 8 on q,v) | none")
    ap.add_argument("--lr", type=float, help="reward model lr (default: the CLI's)")
    ap.add_argument("--pref-task", default="trivia-prefs",
                    help="preference task for prefs, reward, length and dpo")
    ap.add_argument("--pref-samples", type=int, default=2, help="samples per prompt")
    ap.add_argument("--pref-data", type=Path,
                    help="preference JSONL for reward/length instead of --pref-task (the "
                         "perturb stage writes it)")
    ap.add_argument("--pref-pairing", default="extremes",
                    help="extremes | length-matched (the right/wrong pair closest in length)")
    ap.add_argument("--ppo-steps", type=int, default=40)
    ap.add_argument("--ppo-lr", type=float, default=1e-4, help="LoRA lr for PPO")
    ap.add_argument("--ppo-eval-n", type=int, default=64, help="unseen prompts for ppo_eval")
    ap.add_argument("--grpo-steps", type=int, default=20)
    ap.add_argument("--grpo-prompts", type=int, default=4,
                    help="prompts per GRPO rollout in grpo_easy (x 8 samples; 8 prompts needed "
                         "~18 GB for the loss's full-vocabulary log-softmax)")
    ap.add_argument("--grpo-iterations", type=int, default=2,
                    help="optimizer passes per GRPO rollout in grpo_easy (1 skips the "
                         "old-policy forward)")
    ap.add_argument("--grpo-format-weight", type=float, default=0.2,
                    help="grpo_easy's bonus for ending with 'The answer is N.' (0: none)")
    ap.add_argument("--tag", default="", help="suffix for grpo_easy's and reward's run folder "
                    "and results key, so a second attempt keeps the first")
    ap.add_argument("--grpo-lr", type=float, default=1e-4, help="LoRA lr for GRPO")
    ap.add_argument("--n-eval", type=int, default=50, help="held-out arithmetic problems")
    ap.add_argument("--eval-offset", type=int, default=0,
                    help="grpo_easy evaluates held-out problems offset..offset+n-eval, so a "
                         "confirmation run can use problems no earlier run was scored on")
    ap.add_argument("--grpo-seed", type=int, default=0, help="grpo_easy's training seed")
    ap.add_argument("--also-eval", default="",
                    help="grpo_easy: earlier run folders (under --out) whose adapters are also "
                         "scored on the same held-out problems, comma-separated")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/align_demo"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    res_path = a.out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    for name in a.stages.split(","):
        if name not in STAGES:
            raise SystemExit(f"unknown stage {name!r}; valid: {', '.join(STAGES)}")
        key = name + a.tag if name in TAGGED else name
        results[key] = STAGES[name](a)
        print(key, json.dumps(results[key], indent=1), flush=True)
        res_path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
