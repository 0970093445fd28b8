"""Byte-level BPE helpers shared by the loaders, the HF exporter and the trainer.

GPT-2-style vocabularies write every byte as a printable unicode character so that tokens can
live in JSON/text files; these helpers convert between that spelling and raw bytes, between HF
``vocab + merges`` and tiktoken-style mergeable ranks, and between regex dialects.
"""

from __future__ import annotations

from functools import cache

# Split patterns (tiktoken / fancy-regex dialect).
# GPT-2 (r50k), as shipped by tiktoken: possessive quantifiers are only a speed-up.
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
# GPT-4 (cl100k_base).
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
# SmolLM2 (GGUF pre "smollm"; HF: Sequence[Digits(individual_digits=True), ByteLevel]).
# HF first cuts every digit out as its own piece, then runs the GPT-2 regex on each digit-free
# segment. One regex reproduces both stages: ` ?\p{N}+` is replaced by a lone `\p{N}`, no other
# branch can consume a digit, and the whitespace lookahead treats a digit like the end of the
# string (a segment end), so "a  1" splits as "a", "  ", "1" -- not "a", " ", " 1".
SMOLLM_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+|\p{N}"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "smollm": SMOLLM_PATTERN}


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)  # unprintable bytes are shifted past Latin-1
            extra += 1
    return table


@cache
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def bytes_to_token_str(data: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in data)


def token_str_to_bytes(token: str) -> bytes:
    """Byte-level spelling -> bytes; a token with characters outside the byte alphabet is taken
    literally as UTF-8 (as transformers does for added tokens stored in the vocab)."""
    table = unicode_to_byte()
    try:
        return bytes(table[c] for c in token)
    except KeyError:
        return token.encode("utf-8")


def ranks_from_merges(
    vocab: dict[str, int], merges: list[tuple[str, str]], where: str
) -> tuple[dict[bytes, int], list[int], list[tuple[bytes, bytes]]]:
    """HF byte-level ``vocab + merges`` -> (mergeable ranks, rank -> id table, byte merges).

    tiktoken merges by the rank of the merged token, HF by the merge's index; giving each byte
    rank 0..255 and the token produced by merge i rank 256+i (first occurrence wins) makes the
    two agree. Token ids need not follow merge order, hence the rank -> id table. Bytes missing
    from the vocabulary keep a rank (tiktoken needs one per byte) but map to id -1: encode drops
    them, as HF's BPE does when it has no unk token.
    """
    ranks: dict[bytes, int] = {bytes([b]): b for b in range(256)}
    alphabet = byte_to_unicode()
    rank_to_id = [vocab.get(alphabet[b], -1) for b in range(256)]
    byte_merges: list[tuple[bytes, bytes]] = []
    for i, (left, right) in enumerate(merges):
        merged = left + right
        if merged not in vocab:
            raise ValueError(f"{where}: merge {i} {left!r} {right!r} makes {merged!r}, "
                             "which is not in the vocabulary")
        a, b = token_str_to_bytes(left), token_str_to_bytes(right)
        byte_merges.append((a, b))
        if a + b not in ranks:
            ranks[a + b] = len(rank_to_id)
            rank_to_id.append(vocab[merged])
    return ranks, rank_to_id, byte_merges


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recover the merge list implied by tiktoken ranks: each multi-byte token is what BPE (with
    only lower ranks) makes of its own bytes in the final step, i.e. exactly two parts."""
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, best_rank = -1, rank
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best, best_rank = i, r
            if best < 0:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) cannot be built from lower ranks")
        merges.append((parts[0], parts[1]))
    return merges


def regex_to_onig(pattern: str) -> str:
    """Rewrite a tiktoken (fancy-regex) split pattern for HF tokenizers (Oniguruma, Ruby syntax).

    Two things differ there: ``$`` means end of *line*, so it becomes ``\\z``; and ``{1,3}+`` is
    a repeat of a repeat, not possessive, so possessive ``+`` suffixes are dropped (in these
    patterns they never change what matches, they only avoid backtracking).
    """
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            end = i + 2
            if pattern[i + 1 : i + 3] in ("p{", "P{"):  # \p{L}: its "}" is no quantifier
                end = pattern.index("}", i) + 1
            out.append(pattern[i:end])
            i = end
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "$":
            c = r"\z"
        elif c in "+*?}" and pattern[i + 1 : i + 2] == "+" and not (c == "?" and out[-1:] == ["("]):
            out.append(c)
            i += 2  # drop the possessive marker
            continue
        out.append(c)
        i += 1
    return "".join(out)
