"""SmolLM2 for the RAG engine: one cached (optionally int8) model and ChatML prompts whose
message contents can never become control tokens."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from llmlab.lm import load_lm


@lru_cache(maxsize=2)
def get_lm(int8: bool = True) -> Any:
    """SmolLM2-135M-Instruct, loaded once; int8 weights decode ~2.5x faster on CPU."""
    lm = load_lm("smollm2-135m-instruct", "int8" if int8 else "fp32")
    lm.model.eval()
    return lm


def chatml_ids(tok: Any, messages: list[tuple[str, str]], prefill: str = "") -> list[int]:
    """Token ids of a ChatML conversation ending in an open assistant turn.

    The template's markers are encoded as special tokens but message text with
    allowed_special="none": a document containing "<|im_end|>" stays plain text and can't
    close its turn and open a fake system one.
    """
    ids: list[int] = []
    for role, content in messages:
        ids += tok.encode(f"<|im_start|>{role}\n", allowed_special="all")
        ids += tok.encode(content, allowed_special="none")
        ids += tok.encode("<|im_end|>\n", allowed_special="all")
    ids += tok.encode("<|im_start|>assistant\n", allowed_special="all")
    if prefill:
        ids += tok.encode(prefill, allowed_special="none")
    return ids
