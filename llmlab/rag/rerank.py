"""Rerank candidates with SmolLM2: score = log P("Yes") for "Does this passage answer the
question?". No cross-encoder ships offline, so the chat model serves as a pointwise judge."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from llmlab.rag.llm import chatml_ids, get_lm

SYSTEM = "You judge whether a passage answers a question. Reply with Yes or No."
PASSAGE_TOKENS = 192  # enough to judge topicality; prefill cost grows with it


class LLMReranker:
    def __init__(self, lm: Any = None, batch_size: int = 8) -> None:
        # fp32: the int8 kernel only speeds up decode; batched prefill is ~4x slower with it.
        self.lm = lm or get_lm(int8=False)
        self.batch_size = batch_size
        tok = self.lm.tokenizer
        # "Yes" as the first token of the reply; SmolLM2 has it as a single token.
        self.yes = tok.encode("Yes")[0]
        self.no = tok.encode("No")[0]

    def prompt(self, query: str, passage: str) -> list[int]:
        tok = self.lm.tokenizer
        ids = tok.encode(passage, allowed_special="none")[:PASSAGE_TOKENS]
        passage = tok.decode(ids)
        user = (f"Passage:\n{passage}\n\nQuestion: {query}\n\n"
                "Does the passage answer the question? Answer Yes or No.")
        return chatml_ids(tok, [("system", SYSTEM), ("user", user)])

    @torch.inference_mode()
    def score(self, query: str, passages: list[str]) -> np.ndarray:
        """log P(Yes) per passage (higher = more relevant)."""
        out = np.zeros(len(passages), dtype=np.float32)
        pad = self.lm.tokenizer.eos_id or 0
        for s in range(0, len(passages), self.batch_size):
            rows = [self.prompt(query, p) for p in passages[s : s + self.batch_size]]
            n = max(map(len, rows))
            # Left padding + mask: every row's last position is its real last token.
            ids = torch.full((len(rows), n), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), n), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, n - len(r):] = torch.tensor(r)
                mask[i, n - len(r):] = 1
            logits = self.lm.model(ids, attention_mask=mask, last_only=True).logits[:, -1]
            out[s : s + len(rows)] = torch.log_softmax(logits.float(), -1)[:, self.yes].numpy()
        return out
