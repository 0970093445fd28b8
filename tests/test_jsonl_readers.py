"""Every reader of user JSONL names the file and line when a line is not JSON, is nested past
the parser's recursion limit, or the file is not UTF-8 text (the stdlib's own errors name
neither, and a deep line raised RecursionError)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmlab.align.data import load_prefs, load_prompts
from llmlab.eval.judge import load_prompts as judge_prompts
from llmlab.eval.tasks import _gen_items
from llmlab.rag.evaluate import load_qrels
from llmlab.rag.ingest import read_file
from llmlab.train.sft_data import load_file

GOOD = {
    "sft": '{"messages": [{"role": "user", "content": "a"}, '
           '{"role": "assistant", "content": "b"}]}',
    "prefs": '{"prompt": "p", "chosen": "a", "rejected": "b"}',
    "prompts": '{"prompt": "p", "verifier": {"type": "numeric", "answer": 1}}',
    "qrels": '{"query": "q", "relevant": ["d"]}',
    "rag": '{"text": "some text"}',
    "gen": '{"prompt": "p", "reference": "r"}',
    "judge": '{"prompt": "p"}',
}
READERS: dict[str, Callable[[Path], Any]] = {
    "sft": load_file, "prefs": load_prefs, "prompts": load_prompts, "qrels": load_qrels,
    "rag": lambda p: read_file(p, str(p)), "gen": lambda p: _gen_items(str(p)),
    "judge": lambda p: judge_prompts(str(p), None),
}
BAD = {
    "deep": ("[" * 100_000 + "]" * 100_000).encode(),
    "not-json": b"{not json",
    "binary": b"\xff\xfe\x00 binary \x9c",
}


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("reader", READERS)
def test_bad_line_names_the_file_and_line(tmp_path: Path, reader: str, bad: str) -> None:
    ok = tmp_path / "ok.jsonl"
    ok.write_text(GOOD[reader] + "\n")
    assert READERS[reader](ok)  # the first line alone is a valid file
    path = tmp_path / "data.jsonl"
    path.write_bytes(GOOD[reader].encode() + b"\n" + BAD[bad] + b"\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: ")) as e:
        READERS[reader](path)
    assert len(str(e.value)) < 300  # the message, not the line echoed back
