"""`response_format: {"type": "json_object"}`: the reply must parse as a JSON object.

A 135M model does not reliably write JSON, so three layers, each cheap:
1. steer: a system instruction, and the assistant turn is pre-filled with "{", so decoding
   starts inside an object;
2. repair: scan the output with a small JSON tokenizer state machine (in string? escaped?
   bracket stack), cut it back to the last point where the prefix was structurally
   complete, drop a dangling key or comma, and close the open string and brackets;
3. fallback: if that still does not parse, wrap the text as {"response": text}.
The result always parses and is always an object.
"""

from __future__ import annotations

import json
import re

JSON_SYSTEM = (
    "You reply with one JSON object only: no prose, no code fences. "
    "Use double-quoted keys and strings."
)


def _close(prefix: str) -> str | None:
    """Cut `prefix` to its last structurally safe point and close what is open."""
    stack: list[str] = []
    in_str = esc = False
    safe = 0  # prefix[:safe] ends right after a complete value or an opening bracket
    safe_stack: list[str] = []
    for i, ch in enumerate(prefix):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
                safe, safe_stack = i + 1, list(stack)
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
            safe, safe_stack = i + 1, list(stack)
        elif ch in "}]":
            if not stack or stack[-1] != ch:
                break
            stack.pop()
            safe, safe_stack = i + 1, list(stack)
            if not stack:
                return prefix[:safe]
        elif ch.isalnum() or ch in ".-+":
            safe, safe_stack = i + 1, list(stack)
    body = prefix[:safe].rstrip()
    # A key without a value, or a trailing comma/colon, can't be closed as is.
    body = re.sub(r'(,\s*"(?:[^"\\]|\\.)*"\s*:?\s*|[,:]\s*)$', "", body)
    body = re.sub(r'\{\s*"(?:[^"\\]|\\.)*"\s*:?\s*$', "{", body)
    return body + "".join(reversed(safe_stack)) if safe_stack else body


def ensure_json_object(text: str) -> str:
    """Return `text` if it is a JSON object, else its repaired form, else a wrapped one."""
    s = text.strip()
    if s.startswith("```"):
        s = s.strip("`").removeprefix("json").strip()
    start = s.find("{")
    candidates = []
    if start != -1:
        candidates.append(s[start:])
        fixed = _close(s[start:])
        if fixed:
            candidates.append(fixed)
    for c in candidates:
        try:
            obj = json.loads(c)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return json.dumps(obj, ensure_ascii=False)
    return json.dumps({"response": text.strip()}, ensure_ascii=False)
