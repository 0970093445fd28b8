"""Tool (function) calls for a chat model whose template has no tool syntax, SmolLM2's ChatML.

The Hermes / Qwen 2.5 convention, in plain text: the system turn lists the tools as JSON
inside <tools></tools>, the model answers a call as
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>
and a tool's result comes back as a user turn inside <tool_response></tool_response>.
Constrained decoding makes the call well formed: `tool_constraint` is a Lark grammar whose
call is llguidance's `%json` of {"name": one of the tools, "arguments": that tool's
`parameters` schema}, so the arguments always parse and validate. With "auto" the grammar
also admits plain text (anything not starting with "<"), and the model picks.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llmlab.generate.constrain import JSON_LAYOUT, Constraint, lark

OPEN, CLOSE = "<tool_call>", "</tool_call>"
TOOLS_SYSTEM = (
    "You are a function calling AI model. You may call one of the functions below to help "
    "with the user's request. Don't make up argument values.\n<tools>\n{tools}\n</tools>\n"
    "To call a function, reply with a JSON object holding its name and arguments inside "
    "<tool_call></tool_call> tags:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)
_CALL = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*" + re.escape(CLOSE), re.S)


def tools_system(tools: list[dict[str, Any]], system: str | None = None) -> str:
    """The system turn that describes `tools` (OpenAI's {"type": "function", "function":
    {...}} entries), after the conversation's own system text."""
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    text = TOOLS_SYSTEM.format(tools=listed)
    return f"{system}\n\n{text}" if system else text


def call_schema(functions: list[dict[str, Any]]) -> dict[str, Any]:
    """One call to any of `functions` ({"name", "parameters"}): its name and its arguments."""
    options = [{
        "type": "object",
        "properties": {"name": {"const": f["name"]},
                       "arguments": f.get("parameters") or {"type": "object"}},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    } for f in functions]
    return {**(options[0] if len(options) == 1 else {"anyOf": options}),
            "x-guidance": JSON_LAYOUT}


def tool_constraint(functions: list[dict[str, Any]], allow_text: bool) -> Constraint:
    """A call to one of `functions` (`required` or a named function), or with `allow_text`
    (`auto`) either a call or a text reply."""
    call = f'"{OPEN}\\n" %json {json.dumps(call_schema(functions))} "\\n{CLOSE}"'
    if not allow_text:
        return lark(f"start: {call}")
    # Text is anything that doesn't open with "<": the first token decides text or a call.
    return lark(f"start: call | TEXT\ncall: {call}\nTEXT: /[^<](.|\\n)*/")


def parse_tool_calls(text: str) -> list[dict[str, Any]] | None:
    """The calls in a reply ({"name", "arguments"} each), or None when it is plain text or
    a call cut short (by the token budget) that does not parse."""
    if not text.lstrip().startswith(OPEN):
        return None
    calls = []
    for body in _CALL.findall(text):
        try:
            obj = json.loads(body)
        except ValueError:
            return None
        calls.append({"name": obj["name"], "arguments": obj["arguments"]})
    return calls or None


def render_call(name: str, arguments: Any) -> str:
    """An earlier assistant call, as the model would have written it."""
    return f"{OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}" \
           f"\n{CLOSE}"


def render_response(content: str) -> str:
    """A tool's result, as the user turn that hands it back."""
    return f"<tool_response>\n{content}\n</tool_response>"
