"""Read a user's documents (.txt .md .rst .html .pdf .jsonl) into plain-text `Document`s.

Each document keeps where it came from (source path relative to the indexed root, plus
`#L<n>` for a JSONL line), a title and a content hash; chunk offsets later point into
`Document.text`, which is exactly the text that was chunked.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from llmlab.data import jsonl

TEXT_EXTS = {".txt", ".md", ".markdown", ".rst"}
SUPPORTED = TEXT_EXTS | {".html", ".htm", ".pdf", ".jsonl"}
# Every chunk carries its document's title, so an uncapped title is multiplied by the chunk
# count in memory, on disk and in every response that lists chunks.
MAX_TITLE_CHARS = 200


@dataclass
class Document:
    doc_id: str  # stable id: the source (unique within an index)
    source: str  # path relative to the indexed root, or absolute when indexed as a file
    title: str
    text: str
    sha256: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.title = cap_title(self.title)
        if not self.sha256:
            self.sha256 = content_hash(self.text)


def cap_title(title: str, limit: int = MAX_TITLE_CHARS) -> str:
    """`title` cut to `limit` characters (an ellipsis marks the cut)."""
    title = title.strip()
    return title if len(title) <= limit else title[: limit - 1].rstrip() + "\u2026"


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class IngestError(ValueError):
    """A file that couldn't be read; the message names the file and what was wrong."""


class _HTMLText(HTMLParser):
    """Visible text of an HTML page; block tags become paragraph breaks so chunking sees them."""

    BLOCK = {"p", "div", "br", "li", "tr", "section", "article", "pre", "table", "ul", "ol"}
    HEAD = {"h1", "h2", "h3", "h4", "h5", "h6"}
    SKIP = {"script", "style", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False
        # Title text also goes to `parts` (at these indexes) until </title> takes it out: an
        # unclosed <title> then leaves the document as body text instead of swallowing it.
        self._title_at: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title, self._title_at = True, []
        elif tag in self.HEAD:
            # Render headings markdown-style so the chunker's heading rule applies to HTML too.
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "title" and self._in_title:
            self._in_title = False
            self.title += "".join(self.parts[i] for i in self._title_at)
            for i in self._title_at:
                self.parts[i] = ""
            self._title_at = []
        elif tag in self.HEAD or tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title_at.append(len(self.parts))
            self.parts.append(data)
        elif not self._skip:
            self.parts.append(data)


def _tidy(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t\f\v]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def html_to_text(raw: str) -> tuple[str, str]:
    p = _HTMLText()
    p.feed(raw)
    p.close()
    body = re.sub(r"[ \t]+", " ", "".join(p.parts))
    return _tidy(body), html.unescape(p.title).strip()


def _first_heading(text: str) -> str:
    for line in text.splitlines()[:40]:
        s = line.strip()
        if s.startswith("#"):
            return s.lstrip("#").strip()
    lines = text.splitlines()
    # reStructuredText: a title line followed by an underline of punctuation.
    for a, b in zip(lines[:40], lines[1:41], strict=False):
        if a.strip() and re.fullmatch(r"([=\-~^\"'`#*+])\1{2,}", b.strip() or "x"):
            return a.strip()
    return next((s.strip() for s in lines if s.strip()), "")[:120]


def read_file(path: Path, source: str) -> list[Document]:
    """Documents in one file (a JSONL file holds one per line). Raises IngestError."""
    ext = path.suffix.lower()
    try:
        if ext == ".pdf":
            return [_read_pdf(path, source)]
        raw = path.read_bytes().decode("utf-8-sig")  # -sig: a leading BOM is dropped
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise IngestError(f"{source}:{line}: not UTF-8 text ({e.reason} at byte {e.start})"
                          ) from e
    except OSError as e:
        raise IngestError(f"{source}: cannot read ({e.strerror})") from e
    if ext == ".jsonl":
        return _read_jsonl(raw, source)
    if ext in (".html", ".htm"):
        text, title = html_to_text(raw)
        return [Document(source, source, title or _first_heading(text) or path.stem, text)]
    # Plain text stays byte-for-byte (bar a BOM) so chunk offsets index the file itself.
    text = raw.removeprefix("\ufeff")
    if not text.strip():
        return []
    return [Document(source, source, _first_heading(text) or path.stem, text)]


def _read_pdf(path: Path, source: str) -> Document:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError as e:  # pragma: no cover - dependency missing
        raise IngestError(f"{source}: reading PDF needs `pip install pypdf`") from e
    try:
        reader = PdfReader(str(path))
        # Pages as paragraphs: chunks rarely straddle a page break then.
        pages = [_tidy(p.extract_text() or "") for p in reader.pages]
        title = str((reader.metadata or {}).get("/Title") or "").strip()
    except (PdfReadError, ValueError, KeyError, OSError) as e:
        raise IngestError(f"{source}: not a readable PDF ({e})") from e
    text = "\n\n".join(p for p in pages if p)
    return Document(source, source, title or _first_heading(text) or path.stem, text)


def _read_jsonl(raw: str, source: str) -> list[Document]:
    docs = []
    try:
        rows = list(jsonl.lines(raw, source))
    except ValueError as e:
        raise IngestError(str(e)) from None
    for n, obj in rows:
        where = f"{source}:{n}"
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise IngestError(f'{where}: expected an object with a string "text" field')
        did = str(obj.get("id", f"{source}#L{n}"))
        title = str(obj.get("title") or _first_heading(obj["text"]))
        meta = {k: v for k, v in obj.items() if k not in ("id", "text", "title")}
        docs.append(Document(did, f"{source}#L{n}", title, _tidy(obj["text"]), meta=meta))
    return docs


def discover(paths: list[str | Path]) -> Iterator[tuple[Path, str]]:
    """(file, source) for every supported file under `paths`, in a stable order.

    A directory's files are named relative to it (so qrels can say `guide/intro.md`);
    a file given directly keeps the path as given.
    """
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in SUPPORTED and not _hidden(f, p):
                    yield f, f.relative_to(p).as_posix()
        elif p.is_file():
            yield p, p.as_posix()
        else:
            raise IngestError(f"{p}: no such file or directory")


def _hidden(f: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in f.relative_to(root).parts)


def load_documents(
    paths: list[str | Path], errors: list[str] | None = None
) -> list[Document]:
    """All documents under `paths`, exact duplicates (same text) dropped.

    A bad file is recorded in `errors` (or re-raised when errors is None) and the rest go on.
    """
    seen: set[str] = set()
    docs: list[Document] = []
    for f, source in discover(paths):
        try:
            found = read_file(f, source)
        except IngestError as e:
            if errors is None:
                raise
            errors.append(str(e))
            continue
        for d in found:
            if not d.text.strip() or d.sha256 in seen:
                continue
            seen.add(d.sha256)
            docs.append(d)
    return docs
