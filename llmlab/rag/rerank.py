"""Rerank candidates with SmolLM2. No cross-encoder ships offline, so the chat model scores
each (query, passage) pair, in one padded forward over all candidates.

Scorers (measured on the Python-docs sets in BENCHMARKS.md, RAG):

- `upr`: query likelihood, mean_t log p(query_t | passage, query_<t) (Sachan et al. 2022,
  "Improving Passage Retrieval with Zero-Shot Question Generation"). It asks the model only
  to read the passage and predict the query's tokens, which a 135M model can do.
- `yesno`: logit("Yes") - logit("No") after "Does the passage answer the question?" with the
  chat template; the question goes first, so its tokens are a prefix all candidates share.

The final score interpolates min-max normalised scorer and first-stage scores (`weight`
on the scorer): the small model's judgement is noisy, and alone it would reorder good
first-stage results. UPR with weight 0.3 (picked on the howto set) is the default; on the
tutorial set it lifts hybrid's MRR slightly, and yes/no hurts at any weight (BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llmlab.model.cache import KVCache
from llmlab.rag.llm import get_lm

SCORERS = ("upr", "yesno")
PASSAGE_TOKENS = 128  # cost is linear in it; the head of a chunk carries its topic
UPR_INSTRUCTION = "Please write a question based on this passage."
JUDGE_SYSTEM = "You judge whether a passage answers a question. Reply with Yes or No."
JUDGE_ASK = "Does the passage answer the question? Answer Yes or No."


@dataclass
class Batch:
    """Token rows that share `prefix`; `spans[i]` = (start, end) of the tokens in row i
    whose mean log-probability is wanted (empty for none)."""

    prefix: list[int]
    rows: list[list[int]]
    spans: list[tuple[int, int]]


def _chat(role_texts: list[tuple[str, str]], gen: bool = True) -> str:
    """ChatML text with the template's markers (the caller encodes it with specials)."""
    return "".join(f"<|im_start|>{r}\n{t}<|im_end|>\n" for r, t in role_texts) + (
        "<|im_start|>assistant\n" if gen else "")


class LLMReranker:
    def __init__(
        self,
        lm: Any = None,
        scorer: str = "upr",
        weight: float = 0.3,
        passage_tokens: int = PASSAGE_TOKENS,
        bf16: bool = True,
    ) -> None:
        if scorer not in SCORERS:
            raise ValueError(f"unknown rerank scorer {scorer!r}; valid: {', '.join(SCORERS)}")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"rerank weight must be in [0, 1], got {weight}")
        # fp32 weights; bf16 autocast for the matmuls (2 - 3x faster prefill on avx512-bf16
        # CPUs), so the model can be shared with callers that need exact fp32 numbers.
        self.lm = lm or get_lm(int8=False)
        self.scorer, self.weight, self.passage_tokens = scorer, weight, passage_tokens
        self.bf16 = bf16
        tok = self.lm.tokenizer
        self.yes, self.no = tok.encode("Yes")[0], tok.encode("No")[0]

    # ---- prompts -------------------------------------------------------------------------
    def _enc(self, text: str, special: bool = False) -> list[int]:
        return self.lm.tokenizer.encode(text, allowed_special="all" if special else "none")

    def _passage(self, text: str) -> list[int]:
        return self._enc(" ".join(text.split()))[: self.passage_tokens]

    def upr_batch(self, query: str, passages: list[str]) -> Batch:
        """"Passage: P\\nPlease write a question based on this passage.\\nQuestion: Q" (plain
        text, UPR's prompt); the span is Q's tokens."""
        head = self._enc("Passage: ")
        mid = self._enc(f"\n{UPR_INSTRUCTION}\nQuestion:")
        q = self._enc(" " + " ".join(query.split()))
        rows = [self._passage(p) + mid + q for p in passages]
        return Batch(head, rows, [(len(r) - len(q), len(r)) for r in rows])

    def yesno_batch(self, query: str, passages: list[str]) -> Batch:
        """Chat prompt, question first (the shared prefix), then passage and the ask."""
        head = self._enc(_chat([("system", JUDGE_SYSTEM)], gen=False), special=True)
        head += self._enc("<|im_start|>user\n", special=True)
        head += self._enc(f"Question: {' '.join(query.split())}\n\nPassage:\n")
        tail = self._enc(f"\n\n{JUDGE_ASK}") + self._enc(
            "<|im_end|>\n<|im_start|>assistant\n", special=True)
        return Batch(head, [self._passage(p) + tail for p in passages],
                     [(0, 0)] * len(passages))

    # ---- scoring ---------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, b: Batch) -> tuple[np.ndarray, np.ndarray]:
        """(mean log-prob of each row's span, log-softmax of the last real token's logits at
        [Yes, No]) from one padded forward; the prefix is computed once and shared."""
        model = self.lm.model
        cfg = model.cfg
        n, p = len(b.rows), len(b.prefix)
        t = max(map(len, b.rows))
        ctx = torch.autocast("cpu", torch.bfloat16, enabled=self.bf16)
        cache = KVCache(cfg, n, p + t, dtype=model.dtype)
        with ctx:
            if p:  # run the shared prefix once, then give every row a copy of its keys
                one = KVCache(cfg, 1, p, dtype=model.dtype)
                model(torch.tensor([b.prefix]), cache=one, last_only=True)
                for layer in range(cfg.n_layer):
                    cache.k[layer][:, :, :p] = one.k[layer][:, :, :p]
                    cache.v[layer][:, :, :p] = one.v[layer][:, :, :p]
                cache.length = p
            ids = torch.zeros((n, t), dtype=torch.long)
            mask = torch.zeros((n, p + t), dtype=torch.long)
            mask[:, :p] = 1
            for i, r in enumerate(b.rows):  # right padding: positions stay those of the text
                ids[i, : len(r)] = torch.tensor(r)
                mask[i, p : p + len(r)] = 1
            hidden = model(ids, attention_mask=mask, cache=cache, last_only=True).hidden
            # Logits only where needed: the vocabulary projection of every position would
            # cost as much as a third of the model here.
            last = torch.tensor([len(r) - 1 for r in b.rows])
            end = model.lm_head(hidden[torch.arange(n), last]).float().log_softmax(-1)
            span_lp = np.zeros(n, dtype=np.float32)
            for i, (s, e) in enumerate(b.spans):
                if e <= s:
                    continue
                # position j predicts token j+1; a span starting at 0 is predicted by the
                # prefix's last position, which isn't kept, so spans start past 0.
                logits = model.lm_head(hidden[i, s - 1 : e - 1]).float().log_softmax(-1)
                target = torch.tensor(b.rows[i][s:e])
                span_lp[i] = logits.gather(1, target[:, None]).mean().item()
        return span_lp, end[:, [self.yes, self.no]].numpy()

    def score(self, query: str, passages: list[str]) -> np.ndarray:
        """The scorer's raw relevance per passage (higher = more relevant)."""
        if not passages:
            return np.zeros(0, dtype=np.float32)
        if self.scorer == "upr":
            return self.forward(self.upr_batch(query, passages))[0]
        yn = self.forward(self.yesno_batch(query, passages))[1]
        return (yn[:, 0] - yn[:, 1]).astype(np.float32)

    def rerank(self, query: str, passages: list[str],
               first: np.ndarray | list[float] | None = None) -> np.ndarray:
        """Final scores: (1 - weight) * minmax(first) + weight * minmax(scorer). `first` is
        the first-stage scores (None: the passages' order, best first)."""
        return interpolate(self.score(query, passages), self.weight, first)


def rank_scores(scores: np.ndarray) -> np.ndarray:
    """1 - rank / n (best = 1), ties broken by the order given."""
    n = len(scores)
    out = np.empty(n, dtype=np.float64)
    out[np.argsort(-np.asarray(scores), kind="stable")] = 1.0 - np.arange(n) / max(n, 1)
    return out


def minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    span = x.max() - x.min() if len(x) else 0.0
    return (x - x.min()) / span if span > 0 else np.ones_like(x)


def interpolate(rerank: np.ndarray, weight: float,
                first: np.ndarray | list[float] | None = None) -> np.ndarray:
    """(1 - weight) * minmax(first) + weight * minmax(rerank); `first` defaults to the
    input order as 1 - rank / n."""
    n = len(rerank)
    f = 1.0 - np.arange(n) / max(n, 1) if first is None else np.asarray(first)
    return (1.0 - weight) * minmax(f) + weight * minmax(rerank)
