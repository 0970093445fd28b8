"""Our BPE trainer against the naive reference trainer, and its error messages."""

from __future__ import annotations

import pytest
from tokenizer_refs import SAMPLES, bpe_encode, check_hf_export, corpus, naive_train

from llmlab.tokenizer import load_tokenizer, train_bpe
from llmlab.tokenizer.bpe import count_chunks, learn_merges
from llmlab.tokenizer.bytelevel import PATTERNS

TIES = ["ab ab ba ba cd cd dc dc", "aaaaaaa aaa aa a", "xyxyxyxy yxyx", "zz zz zz"] * 3


def fast_merges(texts: list[str], pattern: str, n: int) -> list[tuple[int, int]]:
    chunks = count_chunks(texts, pattern, processes=1)
    return learn_merges({w.encode("utf-8"): c for w, c in chunks.items()}, n)[0]


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_merges_equal_naive_reference(pattern: str) -> None:
    texts = corpus()[:30]
    assert fast_merges(texts, PATTERNS[pattern], 250) == naive_train(texts, PATTERNS[pattern], 250)


def test_tie_breaking_and_overlaps_equal_reference() -> None:
    # Many equal counts and runs of one byte ("aaaa": overlapping pairs, left-to-right merges).
    assert fast_merges(TIES, PATTERNS["gpt2"], 40) == naive_train(TIES, PATTERNS["gpt2"], 40)


@pytest.fixture(scope="module")
def trained():
    texts = corpus()
    return train_bpe(texts * 2, vocab_size=700, pattern="gpt4", name="t",
                     special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                     progress=False)


def test_trained_vocab_layout(trained) -> None:
    assert trained.n_vocab == 700
    assert trained.special_tokens == {"<|endoftext|>": 697, "<|im_start|>": 698,
                                      "<|im_end|>": 699}
    assert trained.eos_id == 697 and trained.bos_id is None
    assert len(trained.merges) == 700 - 256 - 3


def test_trained_tiktoken_equals_reference_encoder(trained) -> None:
    for text in corpus():
        assert trained.encode(text) == bpe_encode(text, trained.pattern, trained.ranks)


def test_trained_save_hf(trained, tmp_path) -> None:
    check_hf_export(trained, tmp_path / "hf")


def test_trained_save_load(trained, tmp_path) -> None:
    again = load_tokenizer(trained.save(tmp_path / "ours"))
    assert again.encode_batch(SAMPLES, allowed_special="all") == trained.encode_batch(
        SAMPLES, allowed_special="all")


def test_two_processes_same_as_one() -> None:
    texts = corpus() * 3
    one = train_bpe(texts, vocab_size=400, processes=1, progress=False)
    two = train_bpe(texts, vocab_size=400, processes=2, progress=False)
    assert one.ranks == two.ranks


def test_train_from_files_and_dirs(tmp_path, capsys) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("hello hello world\n" * 20)
    (tmp_path / "d" / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "d" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "b.txt").write_text("more text here\n")
    tok = train_bpe(files=[tmp_path / "d", tmp_path / "b.txt"], vocab_size=270, progress=False)
    assert tok.decode(tok.encode("hello world")) == "hello world"
    err = capsys.readouterr().err
    assert "skipping" in err and "blob.bin" in err and "latin1.txt" in err and "UTF-8" in err


def test_bad_inputs(tmp_path) -> None:
    with pytest.raises(ValueError, match="empty corpus"):
        train_bpe(["", ""], vocab_size=300, progress=False)
    with pytest.raises(ValueError, match=r"at least 256 \(bytes\) \+ 2"):
        train_bpe(["hi"], vocab_size=257, special_tokens=["<a>", "<b>"], progress=False)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe not utf-8")
    with pytest.raises(ValueError, match=r"bad.txt: is not valid UTF-8 \(byte offset 3\)"):
        train_bpe(files=[bad], vocab_size=300, progress=False)
    binary = tmp_path / "x.bin"
    binary.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match=r"x.bin: looks binary"):
        train_bpe(files=[binary], vocab_size=300, progress=False)
    with pytest.raises(ValueError, match=r"missing.txt: no such file"):
        train_bpe(files=[tmp_path / "missing.txt"], vocab_size=300, progress=False)
    with pytest.raises(ValueError, match="neither"):
        train_bpe(["x"], vocab_size=300, pattern="gpt9(", progress=False)
