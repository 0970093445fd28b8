"""Held-out task accuracy during an alignment run: a few test-split problems of the task the
preference pairs came from, answered greedily at each evaluation and checked by the task's own
verifier. The preference metrics can rise while this falls (BENCHMARKS.md, "DPO on the
arithmetic pairs: the preference metrics rise, held-out accuracy collapses"), so a run logs
both side by side.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from llmlab.align.data import PREF_TASKS, PREF_TOKENS, task_prompts
from llmlab.align.rollout import sample
from llmlab.tasks.verifiers import score_many


def heldout_prompts(task: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """The first `n` test-split prompts (with verifiers) of a `*-prefs` task's own task; none
    for other sources (a preference file has no verifier)."""
    if n <= 0 or task not in PREF_TASKS:
        return []
    return task_prompts(task.removesuffix("-prefs"), n, split="test", seed=seed)


def task_accuracy(model: nn.Module, tok: Any, template: Any, prompts: list[dict[str, Any]],
                  max_new_tokens: int) -> dict[str, float]:
    """{"heldout/accuracy", "heldout/n"}: the share of `prompts` whose greedy answer the
    verifier scores 1 (rollout.sample at temperature 0: the same engine RL samples with)."""
    if not prompts:
        return {}
    out = sample(model, tok, template, prompts, 1, max_new_tokens, 0.0, seed=0)
    rewards = score_many(out.texts, [p["verifier"] for p in prompts])
    return {"heldout/accuracy": sum(r >= 1.0 for r in rewards) / len(prompts),
            "heldout/n": float(len(prompts))}


def heldout_fn(task: str, n: int, tok: Any, template: Any, seed: int = 0) -> Any:
    """The Trainer's `eval_fn` for a run on `task`, or None when there is nothing to check."""
    prompts = heldout_prompts(task, n, seed)
    if not prompts:
        return None
    tokens = PREF_TOKENS[task]
    return lambda model: task_accuracy(model, tok, template, prompts, tokens)
