"""Token-sized chunks that respect headings, paragraphs and sentences where possible.

The text is cut into units (paragraphs; a paragraph too long for a chunk becomes sentences;
a sentence too long becomes token windows), then units are packed greedily up to
`chunk_size` tokens. A markdown or reStructuredText heading starts a new chunk unless the
current one is still small. Overlap repeats whole trailing units of the previous chunk, up
to `overlap` tokens, so a fact cut at a boundary is whole in one of the two chunks.
Every chunk is `text[start:end]` of its document: offsets are exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from llmlab.rag.ingest import Document
from llmlab.tokenizer import load_tokenizer


class _Tok(Protocol):
    def encode(self, text: str, allowed_special: Any = ...) -> list[int]: ...
    def token_bytes(self, tid: int) -> bytes: ...


@dataclass
class Chunk:
    chunk_id: str
    doc_id: str
    source: str
    title: str
    text: str
    start: int  # char offsets into the document text
    end: int
    n_tokens: int
    meta: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        if not d["meta"]:
            d.pop("meta")
        return d


@lru_cache(maxsize=1)
def default_tokenizer() -> _Tok:
    return load_tokenizer("smollm2")


_PARA = re.compile(r"\n\s*\n")
_MD_HEADING = re.compile(r"#{1,6}\s")
_RST_UNDERLINE = re.compile(r"\n([=\-~^\"'`#*+])\1{2,}\s*$")
# A sentence ends at . ! ? (optionally closed by a quote/bracket) followed by whitespace.
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


def _is_heading(para: str) -> bool:
    return bool(_MD_HEADING.match(para)) or bool(_RST_UNDERLINE.search(para))


def _spans(text: str, pattern: re.Pattern[str], lo: int, hi: int) -> list[tuple[int, int]]:
    """Non-empty [start, end) pieces of text[lo:hi] between matches of `pattern`."""
    out, pos = [], lo
    for m in pattern.finditer(text, lo, hi):
        if m.start() > pos:
            out.append((pos, m.start()))
        pos = m.end()
    if pos < hi:
        out.append((pos, hi))
    # Trim whitespace so offsets point at text, not at the separator.
    trimmed = []
    for s, e in out:
        piece = text[s:e]
        s2 = s + (len(piece) - len(piece.lstrip()))
        e2 = e - (len(piece) - len(piece.rstrip()))
        if e2 > s2:
            trimmed.append((s2, e2))
    return trimmed


def _token_windows(tok: _Tok, text: str, s: int, e: int, size: int) -> list[tuple[int, int, int]]:
    """Cut text[s:e] every `size` tokens; char offsets come from the tokens' byte lengths."""
    ids = tok.encode(text[s:e])
    raw = text[s:e].encode("utf-8")
    # char index at every byte offset: count the bytes that start a UTF-8 character.
    char_at = [0] * (len(raw) + 1)
    for i, byte in enumerate(raw):
        char_at[i + 1] = char_at[i] + ((byte & 0xC0) != 0x80)
    out, b0, b, n = [], 0, 0, 0
    for i, t in enumerate(ids):
        b += len(tok.token_bytes(t))
        n += 1
        if n == size or i + 1 == len(ids):
            # A token may end mid-character; round the cut up to the character's end.
            cut = min(b, len(raw))
            while cut < len(raw) and (raw[cut] & 0xC0) == 0x80:
                cut += 1
            cs, ce = s + char_at[b0], s + char_at[cut]
            if ce > cs:
                out.append((cs, ce, n))
            b0, b, n = cut, cut, 0
    return out


def _units(tok: _Tok, text: str, size: int) -> list[tuple[int, int, int, bool]]:
    """(start, end, n_tokens, starts_section) pieces of the text, each at most `size` tokens.

    n_tokens includes the separator before the unit (blank lines, indentation), so the sum
    over a chunk's units is its real token count up to merges across unit boundaries.
    """
    units: list[tuple[int, int, int, bool]] = []
    prev = 0
    for ps, pe in _spans(text, _PARA, 0, len(text)):
        head = _is_heading(text[ps:pe])
        n = len(tok.encode(text[prev:pe]))
        if n <= size:
            units.append((ps, pe, n, head))
            prev = pe
            continue
        first = True
        for ss, se in _spans(text, _SENT_END, ps, pe):
            n = len(tok.encode(text[prev:se]))
            if n <= size:
                units.append((ss, se, n, head and first))
            else:
                # 4 tokens of slack: re-encoding a cut piece can merge differently.
                for ws, we, wn in _token_windows(tok, text, ss, se, size - 4):
                    units.append((ws, we, wn, head and first))
                    first = False
            first = False
            prev = se
        prev = pe
    return units


def chunk_text(
    text: str, chunk_size: int = 256, overlap: int = 32, tok: _Tok | None = None
) -> list[tuple[int, int, int]]:
    """(start, end, n_tokens) chunks of `text`. n_tokens counts units separately (±1-2)."""
    if chunk_size < 8:
        raise ValueError(f"chunk_size must be at least 8 tokens, got {chunk_size}")
    if not 0 <= overlap < chunk_size:
        raise ValueError(f"overlap must be in [0, chunk_size), got {overlap} for {chunk_size}")
    tok = tok or default_tokenizer()
    units = _units(tok, text, chunk_size)
    chunks: list[tuple[int, int, int]] = []
    cur: list[tuple[int, int, int, bool]] = []
    fresh = 0  # units in `cur` that are not overlap carried from the previous chunk

    def flush() -> list[tuple[int, int, int, bool]]:
        chunks.append((cur[0][0], cur[-1][1], sum(u[2] for u in cur)))
        keep: list[tuple[int, int, int, bool]] = []
        for u in reversed(cur):
            if sum(k[2] for k in keep) + u[2] > overlap:
                break
            keep.insert(0, u)
        # Never carry the whole chunk over: that would repeat it forever.
        return keep if len(keep) < len(cur) else []

    for u in units:
        total = sum(x[2] for x in cur)
        if cur and fresh:
            # A heading closes the current chunk once it holds a quarter chunk of its own text;
            # a new section starts without overlap, since the previous section is another topic.
            if u[3] and total >= chunk_size // 4:
                chunks.append((cur[0][0], cur[-1][1], total))
                cur, fresh = [], 0
            elif total + u[2] > chunk_size:
                cur, fresh = flush(), 0
                # Overlap plus the new unit may still not fit: drop overlap from the front.
                while cur and sum(x[2] for x in cur) + u[2] > chunk_size:
                    cur.pop(0)
        cur.append(u)
        fresh += 1
    if cur and fresh:
        chunks.append((cur[0][0], cur[-1][1], sum(u[2] for u in cur)))
    return chunks


def chunk_document(
    doc: Document, chunk_size: int = 256, overlap: int = 32, tok: _Tok | None = None
) -> list[Chunk]:
    return [
        Chunk(f"{doc.doc_id}::c{i}", doc.doc_id, doc.source, doc.title, doc.text[s:e], s, e, n,
              doc.meta or None)
        for i, (s, e, n) in enumerate(chunk_text(doc.text, chunk_size, overlap, tok))
    ]
