"""JSON and JSON Lines files read so that every way they can fail to parse (not UTF-8 text,
not JSON, nested past the parser's recursion limit) names the file and the line.

Shared by every reader of user data: SFT, preference and RL-prompt sets, RAG documents and
qrels, eval generation sets and judge prompts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
    except RecursionError:  # json's parser recurses per level: '[' * 10**5 exhausts it
        raise ValueError(f"{where}: JSON nested too deeply") from None


def read_text(path: Path) -> str:
    """The file as text; a leading BOM (Windows editors) is dropped."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {e.start})") from None


def lines(text: str, source: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, object) per non-blank JSONL line of `text`."""
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield n, loads(line, f"{source}:{n}")


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    return list(lines(read_text(path), path))


def read_rows(path: Path) -> list[tuple[int, Any]]:
    """(line number, object) per JSONL line, or per element of a .json file's array (the
    element number stands in for the line)."""
    if path.suffix != ".json":
        return read_jsonl(path)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except RecursionError:
        raise ValueError(f"{path}:1: JSON nested too deeply") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of examples")
    return [(i + 1, d) for i, d in enumerate(data)]
