"""The diagnostic stages of benchmarks/align_demo.py (run them through it, `--stages NAME`):
what a reward model or policy could have learned instead of correctness.

- length / cue_baselines: the reward model's held-out accuracy beside "the shorter answer
  wins" and "the answer ending 'The answer is N.' wins", split by which side is longer;
- reward_unhinted: the arithmetic reward model on unhinted, length-matched held-out pairs;
- perturb / reward_natural: pairs that differ only in the stated answer, and the model
  trained on them scored on natural pairs;
- dpo_length: DPO's implicit-reward accuracy split by length; ppo_eval: the reward model's
  score of base vs PPO samples on unseen prompts; grpo_format: GRPO with a format reward.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import torch
from _align import (
    FORMAT,
    MODEL,
    all_pairs,
    base_lm,
    format_rows,
    grpo_arithmetic,
)

import llmlab
from llmlab.align.data import (
    load_prefs,
    make_prefs,
    pad_right,
    perturbed_pairs,
    pref_tensors,
    prompt_ids,
    task_prefs,
    task_prompts,
)
from llmlab.align.dpo import sequence_logprob
from llmlab.align.reward import load_reward_model
from llmlab.generate.chat import template_for
from llmlab.generate.engine import complete, make_params
from llmlab.peft.model import apply_adapter, disable_adapters, load_adapter
from llmlab.tasks.metrics import wilson_interval
from llmlab.tasks.verifiers import score_many


def score_pairs(run: Path, pairs: list[dict], threads: int) -> dict:
    """The reward model in `run` on each pair: `right` (chosen scored higher), and both sides'
    completion lengths in tokens (`nc`, `nr`)."""
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


def _acc(right: list[bool], keep: list[bool]) -> tuple[float | None, int]:
    v = [r for r, k in zip(right, keep, strict=True) if k]
    return (sum(v) / len(v) if v else None, len(v))


def cue_baselines(pairs: list[dict], sc: dict) -> dict:
    """The reward model's accuracy beside two shortcuts it could have learned instead: "the
    shorter answer wins" and "the answer that ends 'The answer is N.' wins" (ties split 50/50),
    and its accuracy on the pairs where each shortcut cannot help."""
    right, nc, nr = sc["right"], sc["nc"], sc["nr"]
    fc = [re.search(FORMAT, p["chosen"]) is not None for p in pairs]
    fr = [re.search(FORMAT, p["rejected"]) is not None for p in pairs]
    n = len(pairs)
    longer = (nc > nr).tolist()
    return {"rm_accuracy": sum(right) / n, "wilson95": wilson_interval(int(sum(right)), n),
            "pairs": n,
            "shorter_wins_ties_half": float((nc < nr).float().mean()
                                            + (nc == nr).float().mean() / 2),
            "format_wins_ties_half": (sum(c and not r for c, r in zip(fc, fr, strict=True))
                                      + sum(c == r for c, r in zip(fc, fr, strict=True)) / 2
                                      ) / n,
            "rm_accuracy_chosen_longer": _acc(right, longer),
            "rm_accuracy_chosen_not_longer": _acc(right, [not x for x in longer]),
            "rm_accuracy_same_format": _acc(right, [c == r for c, r in zip(fc, fr,
                                                                           strict=True)])}


def length_check(a: argparse.Namespace, run: Path) -> dict:
    """Chosen answers are shorter than rejected ones more often than not (a hinted sample tends
    to state the answer and stop), so "prefer the shorter" is a baseline to beat. Scores the
    held-out pairs again and splits them by which side is longer (in tokens)."""
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


def stage_length(a: argparse.Namespace) -> dict:
    return length_check(a, a.out / f"reward{a.tag}")


def natural_arith_pairs(a: argparse.Namespace) -> list[dict]:
    """The length-matched arithmetic-easy-prefs pairs (4 samples, half hinted, T 0.7) of the
    first --pairs-from train problems: the `_arith` reward model's data."""
    return task_prefs(base_lm(), "arithmetic-easy-prefs", a.pairs_from, samples=4,
                      hint=True, temperature=0.7, pairing="length-matched")


def stage_perturb(a: argparse.Namespace) -> dict:
    """Writes --pref-data: each natural pair's chosen (right) sample against itself with its
    answer changed (llmlab.align.data.perturb_answer), so the two sides differ only in
    whether the sum is right; same question order, so the same problems are held out."""
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


def stage_reward_unhinted(a: argparse.Namespace) -> dict:
    """The arithmetic reward model on pairs it could not have shortcuts for: --n-eval
    arithmetic-easy problems of the held-out (test) split, 4 unhinted samples each (T 0.7),
    paired right vs wrong with length matching. So no sample saw a hint, no question was
    trained on, and the lengths are close."""
    torch.set_num_threads(a.threads)
    cache = a.out / f"arith_unhinted_pairs_n{a.n_eval}.jsonl"
    if not cache.exists():
        pairs = make_prefs(base_lm(), task_prompts("arithmetic-easy", a.n_eval, split="test"),
                           samples=4, max_new_tokens=40, temperature=0.7, seed=1,
                           pairing="length-matched")
        cache.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    pairs = load_prefs(cache)
    return {"problems": a.n_eval,
            **cue_baselines(pairs, score_pairs(a.out / f"reward{a.tag}", pairs, a.threads))}


def stage_dpo_length(a: argparse.Namespace) -> dict:
    """The DPO policy's held-out implicit-reward accuracy, split by which side is longer (as
    length_check does for the reward model): a summed log-ratio also grows with length."""
    torch.set_num_threads(a.threads)
    pairs = all_pairs(a)[:a.val]
    lm = llmlab.load(MODEL)
    t = pref_tensors(lm.tokenizer, template_for(lm), pairs, 256)
    pm = load_adapter(lm.model, a.out / f"dpo{a.tag}" / "final").eval()

    def logps(side: str) -> torch.Tensor:
        return torch.cat([sequence_logprob(pm, t[f"{side}_ids"][i:i + 8],
                                           t[f"{side}_mask"][i:i + 8], t[f"{side}_cmask"][i:i + 8])
                          for i in range(0, len(pairs), 8)])

    with torch.no_grad():
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


def stage_ppo_eval(a: argparse.Namespace) -> dict:
    """The reward model's mean score on n trivia prompts that neither the reward model nor PPO
    saw (a third shuffle), sampled as in training (T 0.7, 32 tokens, same seed), from the
    base model and from the PPO policy (adapter merged)."""
    torch.set_num_threads(a.threads)
    n = a.ppo_eval_n
    seen = {p["prompt"] for p in task_prompts("trivia", a.pairs_from, seed=0)}
    seen |= {p["prompt"] for p in task_prompts("trivia", 512, seed=1)}
    prompts = [p for p in task_prompts("trivia", 4 * n, seed=2) if p["prompt"] not in seen][:n]
    rm = load_reward_model(a.out / "reward")
    out: dict = {"prompts": len(prompts)}
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


def stage_grpo_format(a: argparse.Namespace) -> dict:
    """GRPO as stage_grpo, with the answer check plus a format reward (0.5 for ending with
    "The answer is N."): most plain groups are all wrong (no signal), and most completions
    run past the length budget before stating an answer. Accuracy is still the numeric check
    alone, on the same held-out problems."""
    data = a.out / "arithmetic_format.jsonl"
    rows = format_rows(task_prompts("arithmetic", 256), 0.5)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = json.loads((a.out / "results.json").read_text())["grpo"]["before"]
    return grpo_arithmetic(a, ["--data", str(data)], a.out / "grpo_format", before)


STAGES = {"length": stage_length, "reward_unhinted": stage_reward_unhinted,
          "perturb": stage_perturb, "reward_natural": stage_reward_natural,
          "dpo_length": stage_dpo_length, "ppo_eval": stage_ppo_eval,
          "grpo_format": stage_grpo_format}
