"""Trivia: Red-DiscordBot's question lists (llmlab/data/trivia.py), one held-out split.

RL prompts, preference pairs and `llmlab eval --task trivia` ask the general-knowledge lists
with `prompt`. SFT (`llmlab sft --data trivia`) trains on every list with its own shorter
`sft_prompt` and the bare first answer as the reply; benchmarks/sft_demo.py's figures were
measured with that format, so both stay, as two named formats of the one task.
"""

from __future__ import annotations

from typing import Any

from llmlab.data.trivia import GENERAL_LISTS, trivia_items
from llmlab.tasks.base import QA, EvalConfig, Generate, Task, sample
from llmlab.tasks.metrics import answer_match, exact_match, token_f1

TRIVIA_LISTS = GENERAL_LISTS
TRIVIA_PROMPT = "Answer the trivia question with just the answer, no explanation.\n\n{q}"
TRIVIA_SFT_PROMPT = "Answer the trivia question with just the answer.\nQuestion: {q}"


def trivia_questions(split: str = "test", lists: tuple[str, ...] = TRIVIA_LISTS) -> list[QA]:
    """Questions of one side of the shared trivia split (llmlab/data/trivia.py) that SFT and
    RL prompts also use: "test" never contains a question those trained on."""
    return [QA(it["question"], it["answers"]) for it in trivia_items(split, lists)]


class Trivia(Task):
    name = "trivia"
    prompt = TRIVIA_PROMPT
    sft_prompt = TRIVIA_SFT_PROMPT
    chat = True

    def examples(self, split: str = "train", n: int | None = None, seed: int | None = 0
                 ) -> list[QA]:
        """The split's general-knowledge questions, shuffled by `seed` (None: list order),
        then the first `n`."""
        qs = trivia_questions(split)
        return qs[:n] if seed is None else sample(qs, n, seed)

    def verifier(self, example: QA) -> dict[str, Any]:
        return {"type": "trivia", "answers": example.answers}

    def sft_examples(self, split: str) -> list[dict[str, Any]]:
        """Items of every list in one split, each with its chat `messages`: `sft_prompt` and
        the first accepted answer (the others are kept for exact-match scoring)."""
        return [{**it, "messages": [
                    {"role": "user", "content": self.sft_prompt.format(q=it["question"])},
                    {"role": "assistant", "content": it["answers"][0]}]}
                for it in trivia_items(split)]

    def evaluate(self, lm: Any, cfg: EvalConfig, generate: Generate) -> dict[str, Any]:
        """Greedy answers to `limit` test questions (a seeded shuffle): accuracy (an accepted
        answer stated), exact match and token F1 (best over the accepted answers)."""
        qs = self.examples("test", cfg.limit, cfg.seed)
        outs = generate(lm, [self.format(q) for q in qs],
                        max_new_tokens=cfg.max_new_tokens or 24, seed=cfg.seed,
                        batch_size=cfg.batch_size, progress=cfg.progress, desc="trivia")
        ok = [answer_match(o, q.answers) for o, q in zip(outs, qs, strict=True)]
        em = [max(exact_match(o, a) for a in q.answers) for o, q in zip(outs, qs, strict=True)]
        f1 = [max(token_f1(o, a) for a in q.answers) for o, q in zip(outs, qs, strict=True)]
        n = len(qs)
        samples = [{"prompt": self.format(q), "question": q.question, "answers": q.answers,
                    "output": o, "correct": c, "exact_match": e, "f1": f,
                    "verdict": "correct" if c else "wrong"}
                   for q, o, c, e, f in zip(qs, outs, ok, em, f1, strict=True)]
        return {"config": {"lists": list(TRIVIA_LISTS), "split": "test", "n": n},
                "metrics": {"accuracy": sum(ok) / n, "exact_match": sum(em) / n,
                            "f1": sum(f1) / n, "n": n},
                "samples": samples}


TRIVIA = Trivia()
