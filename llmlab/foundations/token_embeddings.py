"""Neighbours and analogies on SmolLM2's real input embedding table (49,152 rows x 576).

A BPE vocabulary has no "words": " king" (shown GPT-2 style as "Ġking", the Ġ standing for
the leading space byte) is one token, "king" at the start of a text is another, and many
words are several tokens with no row of their own. Candidates here are the tokens that are a
space followed by letters: whole words as they appear mid-sentence. A query word is encoded
with its leading space and must come out as exactly one token."""

from __future__ import annotations

import re
from typing import Any

import torch

from llmlab.foundations.vectors import VectorSpace
from llmlab.lm import load
from llmlab.tokenizer.bytelevel import bytes_to_token_str

WHOLE_WORD = re.compile(rb"^ [A-Za-z]{2,}$")


class TokenSpace(VectorSpace):
    """Candidates: the whole-word tokens; any single token can be a query."""

    name = "SmolLM2 token"

    def __init__(self, lm: Any) -> None:
        self.tokenizer = lm.tokenizer
        self.embedding = lm.model.model.embed_tokens.weight.detach().float()
        vocab = self.tokenizer.vocab()
        self.ids = [i for i, b in sorted(vocab.items()) if WHOLE_WORD.match(b)]
        super().__init__([vocab[i][1:].decode() for i in self.ids], self.embedding[self.ids])

    @classmethod
    def load(cls, name: str = "smollm2-135m-instruct") -> TokenSpace:
        return cls(load(name))

    def token_id(self, word: str) -> int:
        ids = self.tokenizer.encode(" " + word.strip())
        if len(ids) != 1:
            shown = " ".join(self.token_str(i) for i in ids)
            hint = ""
            for alt in {word.strip().lower(), word.strip().capitalize()} - {word.strip()}:
                if len(self.tokenizer.encode(" " + alt)) == 1:
                    hint = f"; {alt!r} is one"
            raise ValueError(
                f"{word.strip()!r} is {len(ids)} SmolLM2 tokens ({shown}); only a single token "
                f"has its own embedding row{hint}"
            )
        return ids[0]

    def token_str(self, tid: int) -> str:
        """The token as GPT-2 byte-level text: " king" -> "Ġking"."""
        return bytes_to_token_str(self.tokenizer.token_bytes(tid))

    def vector(self, word: str) -> torch.Tensor:
        return self.embedding[self.token_id(word)]

    def describe(self, word: str) -> dict[str, Any]:
        tid = self.token_id(word)
        return {"word": word.strip(), "id": tid, "token": self.token_str(tid)}
