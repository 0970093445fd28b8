"""The outside reference for SFT's assistant-token mask: transformers' `apply_chat_template(...,
return_assistant_tokens_mask=True)` on SmolLM2's tokenizer (our `save_hf` export, loaded by
AutoTokenizer) with a ChatML template whose `{% generation %}` block is what SFT should train:
each assistant reply and its <|im_end|>, not the header nor the newline after."""

from __future__ import annotations

import functools
import tempfile
from typing import Any

CHATML_GENERATION = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


@functools.cache
def hf_smollm2() -> Any:
    import transformers

    from llmlab.tokenizer import load_tokenizer

    d = tempfile.mkdtemp(prefix="smollm2-hf-")
    load_tokenizer("smollm2").save_hf(d)
    return transformers.AutoTokenizer.from_pretrained(d)


def hf_assistant_mask(messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(input_ids, assistant_masks) from transformers for a ChatML conversation."""
    out = hf_smollm2().apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
        chat_template=CHATML_GENERATION)
    return list(out["input_ids"]), list(out["assistant_masks"])
