"""What the preferences page shows, computed by the training code itself: one prompt's
samples and the pair each pairing mode forms from them (`make_prefs`' own steps), and a
reward model's Bradley-Terry view of one pair (`ScalarHead.score`, `reward_loss`)."""

from __future__ import annotations

from typing import Any

import torch

from llmlab.align.data import (
    PAIRINGS,
    PREF_TASKS,
    PREF_TOKENS,
    pair_groups,
    pref_tensors,
    sample_groups,
    task_prompts,
)
from llmlab.align.reward import ScalarHead, reward_loss


def task_prompt(task: str, index: int) -> dict[str, Any]:
    """Prompt `index` of a preference task's train split, as `task_prefs` takes them."""
    if task not in PREF_TASKS:
        raise ValueError(f"task: expected one of {', '.join(PREF_TASKS)}, got {task!r}")
    if index < 0:
        raise ValueError(f"index: must be >= 0, got {index}")
    return task_prompts(task.removesuffix("-prefs"), index + 1)[index]


def _mode(prompt: dict[str, Any], texts: list[str], rewards: list[float], samples: int,
          pairing: str, seed: int) -> dict[str, Any]:
    """The pair `pairing` forms (make_prefs' `pair_groups`), with the sample indices it came
    from and the length difference that decides length-matching."""
    try:
        pairs = pair_groups([prompt], texts, rewards, samples, pairing, seed)
    except ValueError as e:  # perturbed pairs on a task without numeric answers
        return {"pair": None, "why": str(e)}
    if not pairs:
        why = ("no right sample states the answer, or changing it did not lower the reward"
               if pairing == "perturbed" else "every sample got the same reward: no pair")
        return {"pair": None, "why": why}
    p = pairs[0]
    ci = texts.index(p["chosen"])
    ri = texts.index(p["rejected"]) if p["rejected"] in texts else None  # perturbed: new text
    out = {"pair": p, "chosen": ci, "rejected": ri,
           "length_diff": len(p["chosen"]) - len(p["rejected"])}
    if pairing == "length-matched":
        # every best/worst combination it chose among, as pick_pair measures them
        grp = [(r, t) for r, t in zip(rewards, texts, strict=True) if t.strip()]
        hi, lo = max(r for r, _ in grp), min(r for r, _ in grp)
        out["candidates"] = [{"chosen": i, "rejected": j,
                              "length_diff": len(texts[i]) - len(texts[j])}
                             for i in range(samples) if texts[i].strip() and rewards[i] == hi
                             for j in range(samples) if texts[j].strip() and rewards[j] == lo]
    return out


def pairing_view(lm: Any, task: str, index: int, samples: int = 4, temperature: float = 0.7,
                 seed: int = 0, hint: bool = False) -> dict[str, Any]:
    """Sample `samples` completions for one task prompt exactly as `task_prefs` does
    (`sample_groups`, the task's PREF_TOKENS), the verifier's rewards, and the pair each
    pairing mode forms from those same samples."""
    prompt = task_prompt(task, index)
    texts, rewards = sample_groups(lm, [prompt], samples, PREF_TOKENS[task], temperature,
                                   seed, hint, progress=False)
    return {"task": task, "index": index, "prompt": prompt["prompt"],
            "verifier": prompt["verifier"],
            "samples": [{"text": t, "reward": r, "hinted": hint and j >= samples // 2,
                         "chars": len(t), "empty": not t.strip()}
                        for j, (t, r) in enumerate(zip(texts, rewards, strict=True))],
            "pairings": {m: _mode(prompt, texts, rewards, samples, m, seed) for m in PAIRINGS}}


@torch.no_grad()
def score_pair(rm: ScalarHead, tok: Any, template: Any, prompt: str, chosen: str,
               rejected: str, seq_len: int = 256) -> dict[str, Any]:
    """r_c and r_r for one pair, tokenized as training batches are (`pref_tensors`), and the
    Bradley-Terry probability that chosen is preferred, σ(r_c - r_r), with its loss."""
    t = pref_tensors(tok, template, [{"prompt": prompt, "chosen": chosen,
                                      "rejected": rejected}], seq_len)
    rc = rm.score(t["chosen_ids"], t["chosen_mask"]).float()
    rr = rm.score(t["rejected_ids"], t["rejected_mask"]).float()
    loss, _ = reward_loss(rc, rr)
    return {"r_chosen": float(rc[0]), "r_rejected": float(rr[0]), "diff": float(rc[0] - rr[0]),
            "p_chosen": float(torch.sigmoid(rc - rr)[0]), "loss": float(loss),
            "chosen_tokens": int(t["chosen_cmask"].sum()),
            "rejected_tokens": int(t["rejected_cmask"].sum()),
            "chosen_ids": t["chosen_ids"][0, : int(t["chosen_mask"].sum())].tolist(),
            "rejected_ids": t["rejected_ids"][0, : int(t["rejected_mask"].sum())].tolist()}
