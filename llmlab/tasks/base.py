"""A Task: one dataset with its prompt format, examples, reward and evaluation.

RL prompts (`llmlab grpo|ppo --task`), preference building (`--task *-prefs`), SFT data
(`llmlab sft --data trivia|pydocs`) and `llmlab eval --task` all read a dataset through its
Task, so a prompt or a split is written once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmlab.tasks.verifiers import score

KEEP_SAMPLES = 20  # per-item records stored in an eval report (EvalConfig.keep: its default)
# eval's batched generation (llmlab.eval.generation.generate), passed in by the eval runner:
# tasks sit below eval/, so they take it rather than import it.
Generate = Callable[..., list[str]]


@dataclass
class QA:
    question: str
    answers: list[str]  # accepted answers
    target: float | None = None  # numeric answer, for arithmetic


@dataclass
class EvalConfig:
    limit: int | None = None
    seed: int = 0
    batch_size: int = 16
    max_new_tokens: int | None = None  # task default when None
    samples: int = 1  # humaneval completions per problem (pass@k needs >= k)
    temperature: float | None = None  # 0 for one sample, 0.8 for several
    window: int = 1024  # perplexity
    stride: int = 512
    workers: int = 2  # sandbox processes at once
    progress: bool = True
    keep: int | None = KEEP_SAMPLES  # per-item records kept in the report (None: all)
    extra: dict[str, Any] = field(default_factory=dict)


def sample(items: list[Any], limit: int | None, seed: int) -> list[Any]:
    """A seeded shuffle then the first `limit`, so --limit draws from every list."""
    items = list(items)
    random.Random(seed).shuffle(items)
    return items if limit is None else items[:limit]


class Task:
    """Subclasses set `name`, `prompt` (a format string with `{q}`) and `chat`, and define
    `examples` and `verifier`; `evaluate` scores a model on the held-out split."""

    name = ""
    prompt = "{q}"
    chat = True  # False: the prompt is raw text, not a user turn (HumanEval's stubs)

    def examples(self, split: str = "train", n: int | None = None, seed: int | None = 0
                 ) -> list[Any]:
        raise NotImplementedError

    def format(self, example: Any) -> str:
        """The prompt text (a chat task's user turn)."""
        return self.prompt.format(q=example.question)

    def verifier(self, example: Any) -> dict[str, Any]:
        """The verifier spec (llmlab.tasks.verifiers) that scores a completion."""
        raise NotImplementedError(f"task {self.name!r} has no verifier")

    def reward(self, example: Any, completion: str) -> float:
        return score(completion, self.verifier(example))

    def rl_prompts(self, n: int, split: str = "train", seed: int = 0) -> list[dict[str, Any]]:
        """RL prompt rows {"prompt", "chat", "verifier"}, as an RL prompt JSONL holds them."""
        return [{"prompt": self.format(e), "chat": self.chat, "verifier": self.verifier(e)}
                for e in self.examples(split, n, seed)]

    def evaluate(self, lm: Any, cfg: EvalConfig, generate: Generate) -> dict[str, Any]:
        """{"config", "metrics", "samples"} on the test split; "samples" holds every item
        (prompt, output, verdict), and the eval runner keeps `cfg.keep` of them."""
        raise NotImplementedError
