"""The code panel: every source key a page asks for resolves, and what it shows is the
function's text exactly as it stands in the named file at the named line (read from disk)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]
_KEY = re.compile(r'"([a-z0-9_]+\.[a-z0-9_]+)"')


def page_keys() -> set[str]:
    """Keys named in the frontend's `setSources([...])` calls and in the routes' "sources"."""
    keys: set[str] = set()
    for f in (ROOT / "web" / "src").rglob("*.ts"):
        for call in re.findall(r"setSources\(\[([^\]]*)\]", f.read_text()):
            keys |= set(_KEY.findall(call))
    for f in (ROOT / "llmlab" / "server").glob("*.py"):
        for lst in re.findall(r'"sources": \[([^\]]*)\]', f.read_text()):
            keys |= set(_KEY.findall(lst))
    return keys


@pytest.fixture(scope="module")
def http() -> Iterator[TestClient]:
    from llmlab.server.app import create_app
    from llmlab.server.hub import ServerConfig

    with TestClient(create_app(ServerConfig(preload=False))) as c:
        yield c


def test_every_page_key_shows_the_file_text(http: TestClient) -> None:
    keys = page_keys()
    # The scan itself must find the pages' keys, or this test checks nothing.
    assert {"attention.run", "positions.rope", "rag.retrieve", "rag.answer", "lora.params"} <= keys
    for key in sorted(keys):
        r = http.get(f"/api/source/{key}")
        assert r.status_code == 200, (key, r.text)
        s = r.json()
        lines = (ROOT / s["file"]).read_text().splitlines(keepends=True)
        n = s["source"].count("\n")
        assert "".join(lines[s["line"] - 1 : s["line"] - 1 + n]) == s["source"], key
        name = s["qualname"].split(".")[-1]  # a function, or a table (the presets dict)
        assert re.search(rf"def {name}\(|^{name}\b[^=]*=", s["source"]), key


@pytest.mark.parametrize(
    ("key", "file", "name"),
    [
        ("rag.retrieve", "llmlab/rag/pipeline.py", "def retrieve("),
        ("rag.chunk", "llmlab/rag/chunk.py", "def chunk_text("),
        ("rag.fuse", "llmlab/rag/fuse.py", "def rrf("),
        ("rag.answer", "llmlab/rag/answer.py", "def prompt("),
        ("positions.rope", "llmlab/model/positions.py", "def rope_angles("),
    ],
)
def test_rag_and_position_panels_show_the_engine(http: TestClient, key: str, file: str,
                                                 name: str) -> None:
    s = http.get(f"/api/source/{key}").json()
    assert s["file"] == file and name in s["source"]
