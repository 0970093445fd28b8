"""save_hf output, loaded by HF tokenizers and transformers, must encode exactly like ours."""

from __future__ import annotations

import pytest
from tokenizer_refs import corpus

from llmlab.tokenizer import Tokenizer, load_tokenizer


def check_hf_export(tok: Tokenizer, out) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    transformers = pytest.importorskip("transformers")
    tok.save_hf(out)
    texts = corpus()
    ours = tok.encode_batch(texts, allowed_special="all")  # HF always matches added tokens
    hf = HFTokenizer.from_file(str(out / "tokenizer.json"))
    assert [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)] == ours
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    assert [fast.encode(t, add_special_tokens=False) for t in texts] == ours
    auto = transformers.AutoTokenizer.from_pretrained(str(out))
    assert [auto.encode(t) for t in texts] == ours  # no BOS/EOS added by default
    for attr, tid in [("bos_token_id", tok.bos_id), ("eos_token_id", tok.eos_id)]:
        assert getattr(auto, attr) == tid
    assert auto.chat_template == tok.chat_template
    for ids in ours:
        assert hf.decode(ids, skip_special_tokens=False) == tok.decode(ids)
    # and our loader reads the HF directory back to the same tokenizer
    assert load_tokenizer(out).encode_batch(texts, allowed_special="all") == ours


@pytest.mark.parametrize("name", ["gpt2", "smollm2"])
def test_save_hf_named(name: str, tmp_path) -> None:
    check_hf_export(load_tokenizer(name), tmp_path / name)


def test_save_hf_chat_template_renders(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    tok = load_tokenizer("smollm2")
    tok.save_hf(tmp_path)
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = auto.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                    add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert tok.encode(text, allowed_special="all") == auto.encode(text)
