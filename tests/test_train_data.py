"""Data preparation and the batch stream, checked against the tokenizer and plain counting."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llmlab.tokenizer import load_tokenizer
from llmlab.train.data import PretrainBatches, TokenShards, prepare

DOCS = [f"Document number {i}: the quick brown fox jumps over the lazy dog {i * 7}.\n"
        for i in range(40)]


def _read_split(d, split: str, dtype) -> np.ndarray:
    m = json.loads((d / "manifest.json").read_text())
    return np.concatenate([np.fromfile(d / s["file"], dtype=dtype)
                           for s in m["splits"][split]["shards"]])


def test_prepare_txt_jsonl_parquet_match_tokenizer(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text(DOCS[0])
    (tmp_path / "in" / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                                     for t in DOCS[1:20]))
    pq.write_table(pa.table({"text": DOCS[20:]}), tmp_path / "in" / "c.parquet")
    out = tmp_path / "data"
    m = prepare([str(tmp_path / "in")], "gpt2", out, val_fraction=0.2, shard_tokens=100,
                progress=False)
    tok = load_tokenizer("gpt2")
    assert m["dtype"] == "uint16" and m["documents"] == 40
    assert len(m["splits"]["train"]["shards"]) > 1  # 100-token shards force several
    train, val = _read_split(out, "train", np.uint16), _read_split(out, "val", np.uint16)
    # Every document is its gpt2 ids followed by <|endoftext|> (gpt2 has BOS == EOS: no BOS).
    want = [tok.encode(d) + [tok.eos_id] for d in DOCS]
    got = sorted(map(tuple, np.split(np.concatenate([train, val]),
                                     np.flatnonzero(np.concatenate([train, val]) == tok.eos_id)[
                                         :-1] + 1)))
    assert got == sorted(map(tuple, want))
    # The unigram entropy is that of the train split's token frequencies.
    _, counts = np.unique(train, return_counts=True)
    p = counts / counts.sum()
    assert m["unigram_entropy_nats"] == pytest.approx(-(p * np.log(p)).sum(), rel=1e-9)
    assert TokenShards(out, "train").n_tokens == len(train)


def test_prepare_uint32_for_large_vocab(tmp_path):
    m = prepare([_write(tmp_path, "x.txt", "".join(DOCS))], "cl100k", tmp_path / "d",
                val_fraction=0.0, progress=False)
    tok = load_tokenizer("cl100k")
    assert m["dtype"] == "uint32"
    ids = _read_split(tmp_path / "d", "train", np.uint32)
    assert ids.tolist() == tok.encode("".join(DOCS)) + [tok.eos_id]


def test_one_large_file_is_split_into_pieces_with_the_whole_files_ids(tmp_path):
    from llmlab.data.corpora import kjv_text

    text = kjv_text()[:400_000]  # > 6 pieces of 64k characters
    tok = load_tokenizer("gpt2")
    want = tok.encode(text) + [tok.eos_id]
    f = _write(tmp_path, "kjv.txt", text)
    m = prepare([f], "gpt2", tmp_path / "a", val_fraction=0.0, progress=False)
    assert m["pieces"]["train"] > 5
    assert _read_split(tmp_path / "a", "train", np.uint16).tolist() == want
    m = prepare([f], "gpt2", tmp_path / "b", val_fraction=0.3, progress=False)
    sizes = [m["splits"][s]["tokens"] for s in ("train", "val")]
    assert min(sizes) > 0 and sum(sizes) == len(want)


def _write(d, name, text):
    (d / name).write_text(text)
    return str(d / name)


def test_missing_truncated_and_empty_shards_are_named(tmp_path):
    out = tmp_path / "d"
    prepare([_write(tmp_path, "x.txt", "".join(DOCS))], "gpt2", out, val_fraction=0.0,
            progress=False)
    shard = out / "train_000.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:-3])
    with pytest.raises(ValueError, match=r"train_000.bin: \d+ bytes, expected \d+"):
        TokenShards(out, "train")
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="train_000.bin"):
        TokenShards(out, "train")
    m = json.loads((out / "manifest.json").read_text())
    m["splits"]["train"]["shards"] = [{"file": "train_000.bin", "tokens": 0}]
    shard.write_bytes(b"")
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="split 'train' has no tokens"):
        TokenShards(out, "train")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        TokenShards(tmp_path / "nothing", "train")
    with pytest.raises(ValueError, match="hold no text"):
        prepare([_write(tmp_path, "e.txt", "")], "gpt2", tmp_path / "e", progress=False)
    with pytest.raises(FileNotFoundError, match="no such file"):
        prepare([str(tmp_path / "nope.txt")], "gpt2", tmp_path / "f", progress=False)


def test_ranks_read_what_one_process_reads_with_accumulation(tmp_path):
    prepare([_write(tmp_path, "x.txt", "".join(DOCS * 5))], "gpt2", tmp_path / "d",
            val_fraction=0.0, progress=False)
    s = TokenShards(tmp_path / "d", "train")
    one = PretrainBatches(s, 16, 2, seed=3)
    ranks = [PretrainBatches(s, 16, 2, seed=3, rank=r, world=2) for r in range(2)]
    n_win = len(one.win)
    for _ in range(math.ceil(2 * n_win / 4)):  # past an epoch boundary: reshuffle too
        a, b = one.next_batch(), one.next_batch()
        assert (a["input_ids"] == ranks[0].next_batch()["input_ids"]).all()
        assert (b["input_ids"] == ranks[1].next_batch()["input_ids"]).all()
        assert (a["labels"][:, :-1] == a["input_ids"][:, 1:]).all()


def test_one_short_document_still_gets_train_and_val(tmp_path):
    """A corpus of one piece (an uploaded text under 64k characters) is cut at a line start:
    its head is the train split, its tail the val split, and together they are the text."""
    from llmlab.data.corpora import kjv_text
    from llmlab.train.data import _units

    text = kjv_text()[:20_000]
    (tmp_path / "small.txt").write_text(text)
    units = list(_units([str(tmp_path / "small.txt")], 0.1))
    assert [u[0] for u in units] == ["train", "val"] and "".join(u[1] for u in units) == text
    assert units[0][1].endswith("\n") and 0.05 < len(units[1][1]) / len(text) < 0.15
    m = prepare([str(tmp_path / "small.txt")], "bpe:300", tmp_path / "d", 0.1, progress=False)
    assert m["splits"]["train"]["tokens"] > 0 and m["splits"]["val"]["tokens"] > 0
