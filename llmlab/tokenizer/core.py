"""The Tokenizer: byte-level BPE on tiktoken, saved in our own format or as HF's tokenizer.json.

Encoding always runs through ``tiktoken.Encoding`` built from mergeable ranks (fast, Rust).
Vocabularies whose ids are not in merge order (GGUF / HF files) carry a rank -> id table.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import regex
import tiktoken

from llmlab.tokenizer.bytelevel import bytes_to_token_str, merges_from_ranks, regex_to_onig

META_FILE = "llmlab_tokenizer.json"
RANKS_FILE = "tokenizer.tiktoken"
MERGES_FILE = "merges.txt"
FORMAT = "llmlab-tokenizer/1"


class Tokenizer:
    """Byte-level BPE tokenizer.

    ``bos_id``/``eos_id`` are what the vocabulary declares; ``encode`` never adds them.
    Special tokens are only produced from text when allowed (``allowed_special``).
    """

    def __init__(
        self,
        name: str,
        pattern: str,
        ranks: dict[bytes, int],
        special_tokens: dict[str, int],
        *,
        rank_to_id: Sequence[int] | None = None,
        merges: list[tuple[bytes, bytes]] | None = None,
        extra_tokens: dict[int, bytes] | None = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.name = name
        self.pattern = pattern
        self.ranks = ranks
        self.special_tokens = dict(special_tokens)
        self.bos_id, self.eos_id, self.chat_template = bos_id, eos_id, chat_template
        self._merges = merges
        self.extra_tokens = dict(extra_tokens or {})
        n_ranks = max(ranks.values()) + 1
        if rank_to_id is not None and list(rank_to_id) == list(range(n_ranks)):
            rank_to_id = None  # identity: skip the lookup on every encode
        self._rank_to_id = None if rank_to_id is None else np.asarray(rank_to_id, dtype=np.int64)
        if self._rank_to_id is not None and len(self._rank_to_id) != n_ranks:
            raise ValueError(f"{name}: rank_to_id has {len(self._rank_to_id)} entries, "
                             f"expected {n_ranks} (one per rank)")
        # With a lookup table tiktoken works in rank space, so specials get ranks past the end.
        if self._rank_to_id is None:
            enc_specials = dict(self.special_tokens)
        else:
            enc_specials = {s: n_ranks + k for k, s in enumerate(self.special_tokens)}
            special_ids = np.asarray(list(self.special_tokens.values()), dtype=np.int64)
            self._rank_to_id = np.concatenate([self._rank_to_id, special_ids])
        self._enc = tiktoken.Encoding(
            f"llmlab-{name}", pat_str=pattern, mergeable_ranks=ranks, special_tokens=enc_specials
        )
        self._id_bytes = self._build_id_table()
        self.n_vocab = len(self._id_bytes)
        # Bytes the vocabulary lacks (SmolLM2 has no \x04, \xf1, ...). HF drops them *before*
        # merging, so their neighbours inside one pre-token can still merge ("!\x04!" -> "!!");
        # text holding such a character takes a slower path that does the same.
        self._missing = bytes(b for b in range(256) if self._rank_to_id is not None
                              and self._rank_to_id[self.ranks[bytes([b])]] < 0)

    def _build_id_table(self) -> list[bytes | None]:
        pairs: list[tuple[int, bytes]] = []
        for token, rank in self.ranks.items():
            tid = rank if self._rank_to_id is None else int(self._rank_to_id[rank])
            if tid >= 0:
                pairs.append((tid, token))
        pairs += [(i, s.encode("utf-8")) for s, i in self.special_tokens.items()]
        pairs += list(self.extra_tokens.items())
        table: list[bytes | None] = [None] * (max(i for i, _ in pairs) + 1)
        for tid, token in pairs:
            if table[tid] is not None and table[tid] != token:
                raise ValueError(f"{self.name}: id {tid} is given to both {table[tid]!r} "
                                 f"and {token!r}")
            table[tid] = token
        return table

    # encoding -------------------------------------------------------------------------------

    def _allowed(self, allowed_special: set[str] | str) -> set[str] | str:
        if allowed_special == "all":
            return "all"
        if allowed_special == "none":
            return set()
        if isinstance(allowed_special, str):
            raise ValueError(f"allowed_special must be 'all', 'none' or a set of special tokens, "
                             f"got {allowed_special!r}")
        unknown = set(allowed_special) - self.special_tokens.keys()
        if unknown:
            raise ValueError(f"allowed_special: {sorted(unknown)} are not special tokens of "
                             f"{self.name} (known: {sorted(self.special_tokens)})")
        return set(allowed_special)

    def _to_ids(self, ranks: list[int]) -> list[int]:
        if self._rank_to_id is None:
            return ranks
        ids = self._rank_to_id[np.asarray(ranks, dtype=np.int64)]
        return ids[ids >= 0].tolist()  # -1: a byte the vocabulary lacks, dropped like HF does

    def _has_missing(self, text: str) -> bool:
        if not self._missing:
            return False
        data = text.encode("utf-8", errors="surrogatepass")
        return len(data.translate(None, self._missing)) != len(data)

    def _encode_dropping(self, text: str, allowed: set[str] | str) -> list[int]:
        """Slow path for text with bytes the vocabulary lacks: split like tiktoken, delete those
        bytes from each pre-token, then BPE what is left of it as one piece."""
        specials = self.special_tokens if allowed == "all" else allowed
        parts = [text]
        if specials:
            alternation = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
            parts = regex.split(f"({alternation})", text)
        split = regex.compile(self.pattern)
        ranks: list[int] = []
        for k, part in enumerate(parts):
            if k % 2:  # an allowed special token, captured by the split
                ranks += self._enc.encode(part, allowed_special={part})
                continue
            for piece in split.findall(part):
                kept = piece.encode("utf-8", errors="surrogatepass").translate(None, self._missing)
                if kept:
                    ranks += self._enc._encode_single_piece(kept)
        return self._to_ids(ranks)

    def encode(self, text: str, allowed_special: set[str] | str = "none") -> list[int]:
        allowed = self._allowed(allowed_special)
        if self._has_missing(text):
            return self._encode_dropping(text, allowed)
        if not allowed:
            return self._to_ids(self._enc.encode_ordinary(text))
        # Specials not allowed are encoded as plain text rather than raising (tiktoken's default).
        return self._to_ids(self._enc.encode(text, allowed_special=allowed, disallowed_special=()))

    def encode_batch(
        self, texts: list[str], allowed_special: set[str] | str = "none", num_threads: int = 2
    ) -> list[list[int]]:
        allowed = self._allowed(allowed_special)
        if any(self._has_missing(t) for t in texts):
            return [self._encode_dropping(t, allowed) if self._has_missing(t)
                    else self.encode(t, allowed) for t in texts]
        if not allowed:
            out = self._enc.encode_ordinary_batch(texts, num_threads=num_threads)
        else:
            out = self._enc.encode_batch(
                texts, num_threads=num_threads, allowed_special=allowed, disallowed_special=()
            )
        return [self._to_ids(x) for x in out]

    # decoding -------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self._id_bytes
        ids = ids if isinstance(ids, list) else list(ids)
        try:
            if ids and min(ids) < 0:
                raise IndexError
            return b"".join([table[i] for i in ids])  # type: ignore[misc]
        except (IndexError, TypeError):
            bad = [i for i in ids if not (0 <= i < len(table)) or table[i] is None]
            raise ValueError(f"{self.name}: token ids {bad[:10]} are not in the vocabulary "
                             f"(n_vocab={self.n_vocab})") from None

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """One readable string per id; bytes that are not whole UTF-8 show as ``\\xNN``."""
        return [self.decode_bytes([i]).decode("utf-8", errors="backslashreplace") for i in ids]

    def token_bytes(self, tid: int) -> bytes:
        return self.decode_bytes([tid])

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """Merges in priority order (from the source file, else derived from the ranks)."""
        if self._merges is None:
            self._merges = merges_from_ranks(self.ranks)
        return self._merges

    def vocab(self) -> dict[int, bytes]:
        """Every id that can be decoded (specials as their UTF-8 text)."""
        return {i: b for i, b in enumerate(self._id_bytes) if b is not None}

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, n_vocab={self.n_vocab})"

    # persistence ----------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Our format: tiktoken ranks file + JSON metadata (+ merges.txt when the source had its
        own merge list, which can differ from the one the ranks imply)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        lines = [f"{base64.b64encode(t).decode()} {r}" for t, r in
                 sorted(self.ranks.items(), key=lambda kv: kv[1])]
        (out / RANKS_FILE).write_text("\n".join(lines) + "\n")
        has_merges = self._merges is not None
        if has_merges:
            (out / MERGES_FILE).write_text("".join(
                f"{base64.b64encode(a).decode()} {base64.b64encode(b).decode()}\n"
                for a, b in self.merges))
        n_ranks = len(self.ranks)
        meta = {
            "format": FORMAT,
            "name": self.name,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "chat_template": self.chat_template,
            "rank_to_id": None if self._rank_to_id is None else
            self._rank_to_id[:n_ranks].tolist(),
            "extra_tokens": {str(i): base64.b64encode(b).decode()
                             for i, b in self.extra_tokens.items()},
            "has_merges": has_merges,
        }
        (out / META_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False))
        return out

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load a directory written by :meth:`save`."""
        d = Path(directory)
        meta_path = d / META_FILE
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{meta_path}: cannot read tokenizer metadata ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: field 'format' must be {FORMAT!r}")
        for field, kind in [("name", str), ("pattern", str), ("special_tokens", dict)]:
            if not isinstance(meta.get(field), kind):
                raise ValueError(f"{meta_path}: field {field!r} missing or not a {kind.__name__}")
        ranks = _read_ranks(d / RANKS_FILE)
        merges = _read_merges(d / MERGES_FILE) if meta.get("has_merges") else None
        extra = {int(i): base64.b64decode(b) for i, b in (meta.get("extra_tokens") or {}).items()}
        return cls(meta["name"], meta["pattern"], ranks, meta["special_tokens"],
                   rank_to_id=meta.get("rank_to_id"), merges=merges, extra_tokens=extra,
                   bos_id=meta.get("bos_id"), eos_id=meta.get("eos_id"),
                   chat_template=meta.get("chat_template"))

    def save_hf(self, directory: str | Path) -> Path:
        """Write tokenizer.json (BPE + Split(regex) + ByteLevel) + tokenizer_config.json +
        special_tokens_map.json, which transformers loads."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        vocab = {bytes_to_token_str(b): i for i, b in self.vocab().items()
                 if i not in self.special_tokens.values()}
        vocab.update(self.special_tokens)
        added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": True}
                 for s, i in sorted(self.special_tokens.items(), key=lambda kv: kv[1])]
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                      "use_regex": False}
        data = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex_to_onig(self.pattern)},
                 "behavior": "Isolated", "invert": False},
                byte_level,
            ]},
            "post_processor": None,
            "decoder": {**byte_level, "use_regex": True},
            "model": {
                "type": "BPE", "dropout": None, "unk_token": None,
                "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False,
                "byte_fallback": False,
                # tiktoken looks a whole pre-token up before merging; HF does so only with this on.
                "ignore_merges": True,
                "vocab": vocab,
                "merges": [[bytes_to_token_str(a), bytes_to_token_str(b)] for a, b in self.merges],
            },
        }
        (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        id_to_special = {i: s for s, i in self.special_tokens.items()}
        named = {k: id_to_special[v]
                 for k, v in [("bos_token", self.bos_id), ("eos_token", self.eos_id)]
                 if v is not None and v in id_to_special}
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000,
            **named,
        }
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False),
                                                   encoding="utf-8")
        (out / "special_tokens_map.json").write_text(json.dumps(named, indent=1), encoding="utf-8")
        return out


def _read_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read ranks file ({e})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise ValueError(f"{path}:{n}: expected '<base64 token> <rank>', "
                             f"got {line[:60]!r}") from None
    if not ranks:
        raise ValueError(f"{path}: no ranks")
    return ranks


def _read_merges(path: Path) -> list[tuple[bytes, bytes]]:
    merges = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            a, b = line.split()
            merges.append((base64.b64decode(a, validate=True), base64.b64decode(b, validate=True)))
        except ValueError:
            raise ValueError(f"{path}:{n}: expected two base64 tokens, got {line[:60]!r}") from None
    return merges
