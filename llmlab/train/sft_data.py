"""SFT data: chat-messages JSONL, Alpaca JSON/JSONL, and bundled tasks built offline.

Every example becomes a list of `{"role", "content"}` messages. Bad rows fail with the file,
line number and field.

Bundled tasks (`--data trivia`, `--data pydocs`) come from their Task (llmlab/tasks/): trivia
in its SFT format (`TRIVIA.sft_prompt`, the bare first answer as the reply), pydocs' section
questions answered by the section's first paragraph. Their train/held-out split is the one
`llmlab eval` holds out.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llmlab.data.jsonl import read_rows
from llmlab.tasks.pydocs import PYDOCS
from llmlab.tasks.trivia import TRIVIA

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


def _str_field(row: Any, key: str, where: str, required: bool = True) -> str:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
    v = row.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str):
        got = "missing" if v is None else f"a {type(v).__name__}"
        raise ValueError(f"{where}: field {key!r} must be a string, got {got}")
    return v


def parse_chat(row: Any, where: str) -> list[Message]:
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
        raise ValueError(f"{where}: field 'messages' must be a list of {{role, content}}")
    msgs = []
    for i, m in enumerate(row["messages"]):
        w = f"{where}: field messages[{i}]"
        role, content = _str_field(m, "role", w), _str_field(m, "content", w)
        if role not in ROLES:
            raise ValueError(f"{w}.role: {role!r} is not one of {', '.join(ROLES)}")
        msgs.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in msgs):
        raise ValueError(f"{where}: field 'messages' has no assistant turn to train on")
    return msgs


def parse_alpaca(row: Any, where: str) -> list[Message]:
    instruction = _str_field(row, "instruction", where)
    inp = _str_field(row, "input", where, required=False)
    output = _str_field(row, "output", where)
    user = instruction + (f"\n\n{inp}" if inp.strip() else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def load_file(path: str | Path, fmt: str = "auto") -> list[list[Message]]:
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    rows = read_rows(path)
    if fmt == "auto":
        first = rows[0][1] if rows else {}
        fmt = "chat" if isinstance(first, dict) and "messages" in first else "alpaca"
    if fmt not in ("chat", "alpaca"):
        raise ValueError(f"unknown data format {fmt!r}; valid: chat, alpaca")
    parse = parse_chat if fmt == "chat" else parse_alpaca
    out = [parse(r, f"{path}:{n}") for n, r in rows]
    if not out:
        raise ValueError(f"{path}: no examples")
    return out


# ----------------------------------------------------------------------------- bundled


def trivia_examples(split: str) -> list[dict[str, Any]]:
    """Items of one split ("train" or "test"), each with its chat `messages`. The split is
    the one `llmlab eval --task trivia` uses (llmlab/data/trivia.py), so eval stays held out."""
    return TRIVIA.sft_examples(split)


def normalize_answer(s: str) -> str:
    s = s.lower().strip().strip(".!\"'")
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(re.sub(r"[^\w\s]", " ", s).split())


def exact_match(pred: str, answers: list[str]) -> bool:
    p = normalize_answer(pred.split("\n")[0])
    return any(p == normalize_answer(a) for a in answers)


def load_examples(data: str, fmt: str = "auto", split: str = "train") -> list[dict[str, Any]]:
    """Examples `{"messages": [...], ...}` from a file or a bundled task name."""
    if data == "trivia":
        return trivia_examples(split)
    if data == "pydocs":
        return PYDOCS.sft_examples(split)
    if split != "train":
        return []
    return [{"messages": m} for m in load_file(data, fmt)]
