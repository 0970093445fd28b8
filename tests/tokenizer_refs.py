"""Test-only references for the tokenizer tests: a plain-Python BPE encoder and trainer, and a
varied text sample. Deliberately naive and slow; they define what the fast code must produce."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from pathlib import Path

import regex

from llmlab.tokenizer import Tokenizer, load_tokenizer

REPO = Path(__file__).resolve().parents[1]

SAMPLES = [
    "Hello world",
    "hello world",
    "12345 and 3.14, 1,000,000 or 2026-11-22T21:30:00Z",
    "a  1",
    "x\n\n1 ",
    "tabs\tand\t\tspaces   before   words\n\n\n  trailing   ",
    "   \t\n  9 ",
    "héllo wörld, naïve café — “quotes” ‘single’ …",
    "Здравствуй, мир! Γειά σου Κόσμε! こんにちは世界 안녕하세요 مرحبا بالعالم",
    "emoji 🙂🙃 👨‍👩‍👧 🇫🇷 ✔️ and combining e\u0301 a\u0308\u0304",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\nclass A:\n\tpass\n",
    "I'm you're he'll we've they'd IT'S DON'T",
    "٣٤ and ٣, ²³ x¹, ⅷ, ０１２",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "supercalifragilisticexpialidocious" * 5,
    "!\x04! control \x00\x01\x1b[0m chars",
    "<|endoftext|> special-looking <|im_start|>user\nhi<|im_end|>",
    "",
    " ",
    "\n",
]


def corpus() -> list[str]:
    """SAMPLES plus this repository's own Python sources (real code, always present)."""
    files = sorted((REPO / "llmlab").rglob("*.py"))
    return SAMPLES + [p.read_text(encoding="utf-8") for p in files]


def bpe_encode(text: str, pattern: str, ranks: dict[bytes, int]) -> list[int]:
    """Reference byte-level BPE: split with the regex, then in each piece repeatedly merge the
    adjacent pair whose concatenation has the lowest rank (tiktoken's rule)."""
    ids: list[int] = []
    for piece in regex.findall(pattern, text):
        parts = [bytes([b]) for b in piece.encode("utf-8")]
        while len(parts) > 1:
            candidates = [(ranks[p + q], i) for i, (p, q) in enumerate(pairwise(parts))
                          if p + q in ranks]
            if not candidates:
                break
            _, i = min(candidates)
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        ids += [ranks[p] for p in parts]
    return ids


def naive_train(texts: list[str], pattern: str, n_merges: int) -> list[tuple[int, int]]:
    """minbpe-style trainer: recount every pair before each merge. Picks the most frequent pair,
    ties broken by the smallest (left id, right id); merges left to right, non-overlapping."""
    chunks = Counter(tuple(p.encode("utf-8")) for t in texts for p in regex.findall(pattern, t))
    words = {w: c for w, c in chunks.items()}
    merges: list[tuple[int, int]] = []
    for new_id in range(256, 256 + n_merges):
        counts: Counter[tuple[int, int]] = Counter()
        for w, c in words.items():
            for pair in pairwise(w):
                counts[pair] += c
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        merged: dict[tuple[int, ...], int] = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + c
        words = merged
    return merges


def check_hf_export(tok: Tokenizer, out: Path) -> None:
    """save_hf output must load in HF tokenizers and transformers and encode like ``tok``."""
    import transformers
    from tokenizers import Tokenizer as HFTokenizer
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
