"""Token shards on disk: `prepare()` writes them, `TokenShards` memory-maps them back.

Layout of a prepared directory::

    manifest.json        format, dtype, tokenizer, per-split shard list with token counts
    tokenizer/           the tokenizer that produced the ids (Tokenizer.save format)
    train_000.bin ...    raw little-endian uint16 (vocab < 65536) or uint32 token ids
    val_000.bin ...

Documents are concatenated; each one is wrapped as ``[BOS] ids [EOS]`` (BOS skipped when the
tokenizer has none or it equals EOS), so the model sees where one text ends and the next begins.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from llmlab.data.corpora import kjv_text
from llmlab.tokenizer import load_tokenizer, train_bpe
from llmlab.weights.io import atomic_dir

FORMAT = "llmlab-tokens"
MANIFEST = "manifest.json"
BUNDLED = ("kjv", "pydocs")
DEFAULT_SHARD_TOKENS = 100_000_000


# ----------------------------------------------------------------------------- reading inputs


def _kjv_chapters() -> Iterator[str]:
    """The KJV as one document per chapter (1189 of them): enough documents for a val split."""
    chapter, lines = None, []
    for line in kjv_text().splitlines():
        key = line[: line.index(":")]  # "1 John 2:3 text" -> "1 John 2"
        if key != chapter and lines:
            yield "\n".join(lines) + "\n"
            lines = []
        chapter = key
        lines.append(line)
    if lines:
        yield "\n".join(lines) + "\n"


def _check_input(spec: str) -> None:
    if spec not in BUNDLED and not Path(spec).exists():
        raise FileNotFoundError(f"input {spec!r}: no such file or directory (and not a bundled "
                                f"corpus: {', '.join(BUNDLED)})")


def iter_documents(inputs: Sequence[str]) -> Iterator[str]:
    """Documents from bundled corpus names, .txt (one document per file), .jsonl (`text` field
    per line) and .parquet (`text` column per row) files, or directories of those."""
    for spec in inputs:
        if spec == "kjv":
            yield from _kjv_chapters()
            continue
        if spec == "pydocs":
            from llmlab.data.corpora import pydocs_files

            for p in pydocs_files():
                yield p.read_text(encoding="utf-8")
            continue
        path = Path(spec)
        _check_input(spec)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            yield from _read_file(f)


def _read_file(f: Path) -> Iterator[str]:
    suffix = f.suffix.lower()
    if suffix == ".jsonl":
        with f.open(encoding="utf-8-sig") as fh:  # -sig: drop a leading BOM
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{f}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                    raise ValueError(f"{f}:{n}: expected an object with a string field 'text'")
                yield rec["text"]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(f)
        if "text" not in pf.schema_arrow.names:
            cols = pf.schema_arrow.names
            raise ValueError(f"{f}: parquet has no 'text' column (columns: {cols})")
        for batch in pf.iter_batches(columns=["text"], batch_size=4096):
            yield from (t for t in batch.column(0).to_pylist() if t)
    else:
        try:
            yield f.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise ValueError(f"{f}: not UTF-8 text at byte {e.start}; give .txt, .jsonl or "
                             ".parquet") from None


def _is_val(i: int, val_fraction: float) -> bool:
    # A hash of the unit's index, not its position in the stream, decides the split, so val
    # units are spread over the whole corpus (not, say, the end of the KJV).
    h = int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little")
    return h / 2**64 < val_fraction


PIECE_CHARS = 1 << 16
_CUT = re.compile(r"\n(?=\S)")


def _pieces(doc: str) -> list[str]:
    """A long document cut at line starts into ~64k-character pieces, the unit of the
    train/val split, so one big .txt file still gets a val split. GPT-2/GPT-4 pre-tokens never
    span a newline followed by a non-space, so the pieces' ids are the whole document's."""
    out, start = [], 0
    while len(doc) - start > PIECE_CHARS:
        m = _CUT.search(doc, start + PIECE_CHARS)
        if m is None:
            break
        out.append(doc[start : m.end()])
        start = m.end()
    out.append(doc[start:])
    return out


def _units(inputs: Sequence[str], val_fraction: float) -> Iterator[tuple[str, str, bool, bool]]:
    """(split, text, starts a document, ends a document), streamed. The last unit goes to val
    when the hash picked none (a small corpus); a lone unit is cut in two at a line start."""
    i, pending, any_val = 0, None, False
    for doc in iter_documents(inputs):
        if not doc:
            continue
        pieces = _pieces(doc)
        for j, piece in enumerate(pieces):
            if pending is not None:
                yield pending
            split = "val" if _is_val(i, val_fraction) else "train"
            any_val |= split == "val"
            pending = (split, piece, j == 0, j == len(pieces) - 1)
            i += 1
    if pending is not None:
        if val_fraction > 0 and not any_val:
            text = pending[1]
            m = _CUT.search(text, int(len(text) * (1 - val_fraction))) if i == 1 else None
            if m is not None and m.end() < len(text):  # one piece in all (a small upload):
                yield ("train", text[: m.end()], pending[2], False)  # its tail is val
                pending = (pending[0], text[m.end():], False, pending[3])
            pending = ("val", *pending[1:])
        yield pending


# ----------------------------------------------------------------------------- writing shards


class _ShardWriter:
    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.out, self.split, self.dtype, self.cap = out, split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.fh: Any = None
        self.counts: np.ndarray | None = None

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.fh is None or self.shards[-1]["tokens"] >= self.cap:
                self._open()
            room = self.cap - self.shards[-1]["tokens"]
            part, ids = ids[:room], ids[room:]
            part.astype(self.dtype).tofile(self.fh)
            self.shards[-1]["tokens"] += len(part)

    def _open(self) -> None:
        if self.fh is not None:
            self.fh.close()
        name = f"{self.split}_{len(self.shards):03d}.bin"
        self.fh = (self.out / name).open("wb")
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> dict[str, Any]:
        if self.fh is not None:
            self.fh.close()
        return {"tokens": sum(s["tokens"] for s in self.shards), "shards": self.shards}


def resolve_tokenizer(spec: str, train_docs: Iterable[str] = ()) -> Any:
    """A tokenizer by name/dir, or ``bpe:N``: train an N-id byte-level BPE on ``train_docs``."""
    if spec.startswith("bpe:"):
        try:
            n = int(spec[4:])
        except ValueError:
            raise ValueError(f"--tokenizer {spec!r}: expected bpe:<vocab size>, e.g. bpe:4096") \
                from None
        return train_bpe(train_docs, vocab_size=n, special_tokens=["<|endoftext|>"],
                         name=f"bpe{n}", progress=False)
    return load_tokenizer(spec)


def prepare(inputs: Sequence[str], tokenizer: str, out: str | Path, val_fraction: float = 0.05,
            shard_tokens: int = DEFAULT_SHARD_TOKENS, progress: bool = True) -> dict[str, Any]:
    """Tokenize `inputs` into `out` (written atomically); returns the manifest."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if not inputs:
        raise ValueError("no inputs: give files, directories or a bundled corpus "
                         f"({', '.join(BUNDLED)})")
    for spec in inputs:  # before any work or progress bar
        _check_input(spec)
    tok = resolve_tokenizer(tokenizer, (t for sp, t, _, _ in _units(inputs, val_fraction)
                                        if sp == "train"))
    bos, eos = tok.bos_id, tok.eos_id
    if bos is None and eos is None:
        raise ValueError(f"tokenizer {tokenizer!r} has neither a BOS nor an EOS token: document "
                         "boundaries can't be marked")
    head = [bos] if bos is not None and bos != eos else []
    tail = [eos] if eos is not None else []
    dtype = np.dtype("<u2") if tok.n_vocab < 2**16 else np.dtype("<u4")
    counts = np.zeros(tok.n_vocab, dtype=np.int64)
    n_bytes = {"train": 0, "val": 0}  # per split, for bits per byte across tokenizers
    n_units = {"train": 0, "val": 0}
    n_docs = 0
    with atomic_dir(out) as tmp:
        writers = {s: _ShardWriter(tmp, s, dtype, shard_tokens) for s in ("train", "val")}
        bar = tqdm(unit="B", unit_scale=True, desc="tokenizing", disable=not progress)
        stream = _units(inputs, val_fraction)
        while batch := list(itertools.islice(stream, 256)):
            for (split, text, first, last), ids in zip(
                batch, tok.encode_batch([u[1] for u in batch]), strict=True
            ):
                arr = np.asarray((head if first else []) + ids + (tail if last else []),
                                 dtype=np.int64)
                size = len(text.encode("utf-8"))
                n_bytes[split] += size
                n_units[split] += 1
                n_docs += first
                if split == "train":
                    counts += np.bincount(arr, minlength=tok.n_vocab)
                writers[split].write(arr)
                bar.update(size)
        bar.close()
        if not n_docs:
            raise ValueError(f"inputs {list(inputs)} hold no text")
        if not counts.sum():
            raise ValueError(f"only {n_units['val']} unit(s) of up to {PIECE_CHARS} characters, "
                             "all in val: nothing left for the train split; give more text or "
                             "--val-fraction 0")
        p = counts[counts > 0] / counts.sum()
        manifest = {
            "format": FORMAT,
            "version": 1,
            "dtype": dtype.name,
            "tokenizer": {"spec": tokenizer, "name": tok.name, "n_vocab": tok.n_vocab,
                          "bos_id": bos, "eos_id": eos},
            "inputs": list(inputs),
            "documents": n_docs,
            "pieces": n_units,  # split units: documents, long ones cut at ~64k characters
            "bytes": n_bytes,
            # Entropy of the train split's token frequencies: the loss of the best model that
            # ignores context, the bar a language model has to clear.
            "unigram_entropy_nats": float(-(p * np.log(p)).sum()),
            "splits": {s: w.close() for s, w in writers.items()},
        }
        tok.save(tmp / "tokenizer")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# ----------------------------------------------------------------------------- reading shards


class TokenShards:
    """The shards of one split as memmaps, validated against the manifest."""

    def __init__(self, data_dir: str | Path, split: str) -> None:
        d = Path(data_dir)
        self.dir = d
        mpath = d / MANIFEST
        if not mpath.exists():
            raise FileNotFoundError(f"{mpath}: missing; prepare the data first with "
                                    "`llmlab data prepare --input ... --out {d}`")
        try:
            self.manifest = m = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{mpath}: not valid JSON ({e.msg})") from None
        if m.get("format") != FORMAT:
            raise ValueError(f"{mpath}: field 'format' is {m.get('format')!r}, expected {FORMAT!r}")
        if split not in m.get("splits", {}):
            raise ValueError(f"{mpath}: no split {split!r} (has {sorted(m.get('splits', {}))})")
        self.dtype = np.dtype(m["dtype"])
        self.arrays: list[np.ndarray] = []
        for sh in m["splits"][split]["shards"]:
            f = d / sh["file"]
            if not f.exists():
                raise FileNotFoundError(f"{f}: shard listed in {mpath} is missing")
            want = sh["tokens"] * self.dtype.itemsize
            if f.stat().st_size != want:
                raise ValueError(f"{f}: {f.stat().st_size} bytes, expected {want} "
                                 f"({sh['tokens']} {self.dtype.name} tokens per {mpath}); "
                                 "the shard is truncated or corrupt, prepare the data again")
            if sh["tokens"]:
                self.arrays.append(np.memmap(f, dtype=self.dtype, mode="r"))
        self.n_tokens = sum(len(a) for a in self.arrays)
        if self.n_tokens == 0:
            raise ValueError(f"{d}: split {split!r} has no tokens")

    @property
    def n_vocab(self) -> int:
        return int(self.manifest["tokenizer"]["n_vocab"])

    def windows(self, length: int) -> np.ndarray:
        """(shard, start) of every non-overlapping window of `length` tokens (none straddle
        shards)."""
        parts = []
        for i, a in enumerate(self.arrays):
            n = len(a) // length
            parts.append(np.stack([np.full(n, i), np.arange(n) * length], axis=1))
        out = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
        if len(out) == 0:
            raise ValueError(f"{self.dir}: {self.n_tokens} tokens can't fill one window of "
                             f"{length} (seq_len + 1); lower --seq-len or add data")
        return out

    def read(self, shard: int, start: int, length: int) -> np.ndarray:
        return np.asarray(self.arrays[shard][start : start + length], dtype=np.int64)


class PretrainBatches:
    """Shuffled windows of `seq_len + 1` tokens, addressed by a global sample counter.

    Epoch e visits every window once in the order of permutation(seed, e). Micro-batch k of
    rank r takes the samples after those of all earlier (micro, rank) pairs, so N ranks with
    accumulation A read exactly what one process with accumulation N*A reads. The only state
    is the counter, which makes resuming exact."""

    def __init__(self, shards: TokenShards, seq_len: int, batch_size: int, seed: int,
                 rank: int = 0, world: int = 1, shuffle: bool = True) -> None:
        self.shards, self.t, self.b = shards, seq_len, batch_size
        self.seed, self.rank, self.world, self.shuffle = seed, rank, world, shuffle
        self.win = shards.windows(seq_len + 1)
        self.counter = 0  # micro-batches this rank has taken (same on every rank)
        self._perm_epoch, self._perm = -1, np.arange(0)

    def _index(self, g: int) -> int:
        n = len(self.win)
        epoch, i = divmod(g, n)
        if not self.shuffle:
            return i
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(n)
            self._perm_epoch = epoch
        return int(self._perm[i])

    def next_batch(self) -> dict[str, Any]:
        first = (self.counter * self.world + self.rank) * self.b
        rows = []
        for g in range(first, first + self.b):
            shard, start = self.win[self._index(g)]
            rows.append(self.shards.read(int(shard), int(start), self.t + 1))
        self.counter += 1
        x = torch.from_numpy(np.stack(rows))
        return {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    def epochs(self) -> float:
        return self.counter * self.world * self.b / len(self.win)

    def state_dict(self) -> dict[str, Any]:
        return {"counter": self.counter, "world": self.world, "batch_size": self.b,
                "seq_len": self.t, "seed": self.seed}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        for k, mine in (("world", self.world), ("batch_size", self.b), ("seq_len", self.t),
                        ("seed", self.seed)):
            if s[k] != mine:
                raise ValueError(f"data position was saved with {k}={s[k]}, this run has "
                                 f"{k}={mine}; resume with the same value")
        self.counter = int(s["counter"])


def eval_batches(shards: TokenShards, seq_len: int, batch_size: int, n_batches: int,
                 rank: int = 0, world: int = 1) -> list[dict[str, Any]]:
    """The first windows of the val split, the same set every evaluation and for any number
    of ranks: `n_batches` (rounded down to a multiple of `world`) global batches, dealt out
    round-robin, so the mean over ranks equals one process's mean."""
    src = PretrainBatches(shards, seq_len, batch_size, seed=0, shuffle=False)
    n = min(n_batches, len(src.win) // batch_size)  # never wrap around and repeat windows
    n = max(world, n - n % world)
    batches = [src.next_batch() for _ in range(n)]
    return batches[rank::world]
