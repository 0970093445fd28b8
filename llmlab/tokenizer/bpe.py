"""Byte-level BPE trainer.

Two phases, as in HF tokenizers / rustbpe:

1. Count: split every document with the regex and count each distinct chunk once (optionally
   in 2 processes). Training then works on ~10^5 distinct chunks instead of ~10^7 bytes.
2. Merge: pair counts are kept up to date incrementally. Each merge only revisits the chunks
   that contain the merged pair (a pair -> chunks index), and a heap with lazy invalidation
   yields the best pair (entries whose count went stale are re-pushed or dropped when popped).

Tie-breaking (deterministic): the most frequent pair wins; among equally frequent pairs, the
smallest (left id, right id). Byte ids are the byte values, merged tokens get 256, 257, ... in
merge order. Within a chunk a merge is applied left to right, non-overlapping ("aaa" -> "aa a").
Pair counts include overlapping occurrences ("aaa" counts ("a","a") twice), like minbpe/HF.
"""

from __future__ import annotations

import heapq
import multiprocessing as mp
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from itertools import pairwise
from pathlib import Path

import regex
from tqdm import tqdm

from llmlab.tokenizer.bytelevel import PATTERNS
from llmlab.tokenizer.core import Tokenizer

_SHIFT = 20  # pair key = left << 20 | right: one int hashes/compares faster than a tuple
_MASK = (1 << _SHIFT) - 1
_KEY_BITS = 2 * _SHIFT
_BATCH_CHARS = 1 << 20  # documents are counted in ~1M-character batches
# A newline followed by a non-space character ends a chunk in the GPT-2 and GPT-4 patterns
# (no branch matches across it), so long documents can be cut there without changing counts.
_SAFE_CUT = regex.compile(r"\n(?=\S)")


def _read_text_file(path: Path, fatal: bool) -> str | None:
    """A file's text, or None (with a warning) when it is not UTF-8 text and not fatal."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    problem = None
    if b"\x00" in data[:8192]:
        problem = "looks binary (NUL bytes)"
    else:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            problem = f"is not valid UTF-8 (byte offset {e.start})"
    if fatal:
        raise ValueError(f"{path}: {problem}; training needs UTF-8 text")
    print(f"warning: skipping {path}: {problem}", file=sys.stderr)
    return None


def iter_files(paths: Sequence[str | Path]) -> Iterator[str]:
    """Texts of the given files and of the files under the given directories. A named file that
    is unreadable, binary or not UTF-8 is fatal; such a file found inside a directory is skipped
    with a warning (directories often hold a stray binary)."""
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts):
                    text = _read_text_file(f, fatal=False)
                    if text is not None:
                        yield text
        elif p.exists():
            yield _read_text_file(p, fatal=True)  # type: ignore[misc]
        else:
            raise ValueError(f"{p}: no such file or directory")


def _batches(texts: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"training texts must be str, got {type(text).__name__}")
        pieces = [text]
        if len(text) > _BATCH_CHARS:  # cut huge documents so both processes get work
            cuts = [m.end() for m in _SAFE_CUT.finditer(text)]
            pieces, start, step = [], 0, _BATCH_CHARS
            for c in cuts:
                if c - start >= step:
                    pieces.append(text[start:c])
                    start = c
            pieces.append(text[start:])
        for piece in pieces:
            batch.append(piece)
            size += len(piece)
            if size >= _BATCH_CHARS:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _count_batch(args: tuple[str, list[str]]) -> Counter[str]:
    pattern, docs = args
    split = regex.compile(pattern)
    counts: Counter[str] = Counter()
    for doc in docs:
        counts.update(split.findall(doc))
    return counts


def count_chunks(texts: Iterable[str], pattern: str, processes: int = 2) -> Counter[str]:
    """Distinct regex chunks of all texts with their counts."""
    jobs = ((pattern, b) for b in _batches(texts))
    total: Counter[str] = Counter()
    if processes <= 1:
        for job in jobs:
            total.update(_count_batch(job))
        return total
    with mp.get_context("fork" if os.name == "posix" else "spawn").Pool(processes) as pool:
        for counts in pool.imap_unordered(_count_batch, jobs):
            total.update(counts)
    return total


def learn_merges(
    chunk_counts: dict[bytes, int], n_merges: int, progress: bool = False
) -> tuple[list[tuple[int, int]], list[bytes]]:
    """The incremental merge loop (see the module docstring for the rules).

    Returns the merges (left id, right id) in order and the bytes of every id. Should a merge
    rebuild the bytes of an existing token (a+bc after ab+c), it reuses that id instead of adding
    a duplicate, which tiktoken ranks could not hold; it does not count toward ``n_merges``.
    """
    vocab = [bytes([i]) for i in range(256)]
    ids = {t: i for i, t in enumerate(vocab)}
    words = [list(w) for w in chunk_counts]
    counts = list(chunk_counts.values())
    pair_count: defaultdict[int, int] = defaultdict(int)
    where: defaultdict[int, set[int]] = defaultdict(set)  # may hold stale word ids
    for wi, w in enumerate(words):
        c = counts[wi]
        for x, y in pairwise(w):
            p = x << _SHIFT | y
            pair_count[p] += c
            where[p].add(wi)
    # Heap key = -count * 2^40 + pair: a min-heap pops the highest count, then the smallest pair.
    heap = [(-c << _KEY_BITS) + p for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    bar = tqdm(total=n_merges, desc="bpe merges", unit="merge", disable=not progress)
    while len(vocab) - 256 < n_merges and heap:
        key = heapq.heappop(heap)
        p, c = key & ((1 << _KEY_BITS) - 1), -(key >> _KEY_BITS)
        current = pair_count.get(p, 0)
        if current != c:  # stale entry
            if 0 < current < c:
                heapq.heappush(heap, (-current << _KEY_BITS) + p)
            continue  # current > c: a fresher entry with the higher count is in the heap
        a, b = p >> _SHIFT, p & _MASK
        merges.append((a, b))
        token = vocab[a] + vocab[b]
        new = ids.get(token, len(vocab))
        if new == len(vocab):
            vocab.append(token)
            ids[token] = new
            bar.update(1)
        delta: defaultdict[int, int] = defaultdict(int)
        for wi in where.pop(p):
            w = words[wi]
            out: list[int] = []
            i, n = 0, len(w)
            while i < n:
                if w[i] == a and i + 1 < n and w[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            if len(out) == n:
                continue  # stale index entry: the pair left this word in an earlier merge
            c = counts[wi]
            for x, y in pairwise(w):
                delta[x << _SHIFT | y] -= c
            for x, y in pairwise(out):
                q = x << _SHIFT | y
                delta[q] += c
                if x == new or y == new:
                    where[q].add(wi)
            words[wi] = out
        for q, d in delta.items():
            if d:
                total = pair_count[q] + d
                pair_count[q] = total
                if d > 0:
                    heapq.heappush(heap, (-total << _KEY_BITS) + q)
        pair_count.pop(p, None)
    bar.close()
    return merges, vocab


def train_bpe(
    texts: Iterable[str] | None = None,
    *,
    vocab_size: int,
    files: Sequence[str | Path] = (),
    pattern: str = "gpt4",
    special_tokens: Sequence[str] = (),
    name: str = "bpe",
    processes: int = 2,
    progress: bool = True,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer of ``vocab_size`` ids (256 bytes + merges + specials).

    ``texts`` are documents (strings); ``files`` are files or directories of UTF-8 text.
    ``pattern`` is ``"gpt2"``, ``"gpt4"`` or a regex. Specials get the last ids.
    """
    regex_pattern = PATTERNS.get(pattern, pattern)
    try:
        regex.compile(regex_pattern)
    except regex.error as e:
        raise ValueError(f"pattern {pattern!r} is neither {sorted(PATTERNS)} nor a valid "
                         f"regex ({e})") from None
    specials = list(dict.fromkeys(special_tokens))
    if any(not s for s in specials):
        raise ValueError("special tokens must be non-empty strings")
    if vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size {vocab_size} is too small: it must be at least 256 (bytes)"
                         f" + {len(specials)} (special tokens) = {256 + len(specials)}")
    if texts is None and not files:
        raise ValueError("nothing to train on: give texts and/or files")
    sources: list[Iterable[str]] = [iter_files(files)] if files else []
    if texts is not None:
        sources.append(texts)
    stream = (t for src in sources for t in src)
    chunks = count_chunks(stream, regex_pattern, processes)
    if not chunks:
        raise ValueError("empty corpus: the texts/files hold no text to train on")
    # Sorting makes word ids (and so the set iteration order) independent of counting order.
    byte_counts = {w.encode("utf-8"): c for w, c in sorted(chunks.items())}
    n_merges = vocab_size - 256 - len(specials)
    merges, vocab = learn_merges(byte_counts, n_merges, progress)
    ranks = {t: i for i, t in enumerate(vocab)}
    n = len(vocab)
    if n - 256 < n_merges:
        print(f"warning: the corpus ran out of pairs after {n - 256} merges; the vocabulary has "
              f"{n + len(specials)} ids, not {vocab_size}", file=sys.stderr)
    special_ids = {s: n + k for k, s in enumerate(specials)}
    bos = next((special_ids[s] for s in ("<|bos|>", "<|begin_of_text|>", "<s>")
                if s in special_ids), None)
    eos = next((special_ids[s] for s in ("<|eos|>", "<|endoftext|>", "<|end_of_text|>", "</s>")
                if s in special_ids), None)
    return Tokenizer(name, regex_pattern, ranks, special_ids, merges=[
        (vocab[a], vocab[b]) for a, b in merges], bos_id=bos, eos_id=eos)
