"""save_hf output, loaded by HF tokenizers and transformers, must encode exactly like ours."""

from __future__ import annotations

import pytest
from tokenizer_refs import check_hf_export

from llmlab.tokenizer import load_tokenizer


@pytest.mark.parametrize("name", ["gpt2", "smollm2"])
def test_save_hf_named(name: str, tmp_path) -> None:
    check_hf_export(load_tokenizer(name), tmp_path / name)


def test_save_hf_chat_template_renders(tmp_path) -> None:
    import transformers
    tok = load_tokenizer("smollm2")
    tok.save_hf(tmp_path)
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = auto.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                    add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert tok.encode(text, allowed_special="all") == auto.encode(text)
