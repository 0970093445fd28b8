"""/v1/chat/completions' structured outputs: `response_format` (json_object, json_schema) and
`tools` / `tool_choice`, as request models and the wiring to the library's constrained
decoding (generate/constrain.py, generate/toolcall.py). The guarantee is the grammar's: no
repair pass. An output cut by `max_tokens` is incomplete, with finish_reason "length", as
OpenAI documents for its own structured outputs."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from llmlab.generate import toolcall
from llmlab.generate.constrain import Constraint, json_object, json_schema
from llmlab.server.errors import ApiError

# A hint in the system turn: the grammar guarantees the form, the hint helps a small model
# fill it with content rather than whatever the first allowed token leads to.
JSON_SYSTEM = "You reply with one JSON object only."
SCHEMA_SYSTEM = "You reply with one JSON object only, matching this JSON schema:\n{schema}"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for schema and function names


class JsonSchemaSpec(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaSpec | None = None


class FunctionSpec(BaseModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class CalledFunction(BaseModel):
    name: str
    arguments: str  # a JSON string, as OpenAI sends it


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


@dataclass
class Plan:
    """What the request's structure asks of decoding: the constraint, the system text to
    add, and whether a reply that is a tool call is to be returned as `tool_calls`."""

    constraint: Constraint | None = None
    system: str | None = None
    tools: bool = False
    names: list[str] = field(default_factory=list)


def plan(response_format: ResponseFormat | None, tools: list[Tool] | None,
         tool_choice: ToolChoice | None) -> Plan:
    """The Plan for a request, or an ApiError naming the field that is wrong."""
    if tool_choice is not None and not tools:
        raise ApiError(400, "tool_choice: only allowed when tools are given", "tool_choice")
    if tools and response_format is not None and response_format.type != "text":
        raise ApiError(400, "response_format: can't be combined with tools", "response_format")
    if tools:
        return _tools_plan(tools, tool_choice or "auto")
    if response_format is None or response_format.type == "text":
        return Plan()
    if response_format.type == "json_object":
        return Plan(json_object(), JSON_SYSTEM)
    spec = response_format.json_schema
    if spec is None or spec.schema_ is None:
        param = "response_format.json_schema" + ("" if spec is None else ".schema")
        raise ApiError(400, f"{param}: required when response_format.type is 'json_schema'",
                       param)
    if not _NAME.match(spec.name):
        raise ApiError(400, "response_format.json_schema.name: letters, digits, _ and - only",
                       "response_format.json_schema.name")
    try:
        c = json_schema(spec.schema_, strict=spec.strict is not False)
    except ValueError as e:
        raise ApiError(400, f"response_format.json_schema.{e}",
                       "response_format.json_schema.schema") from None
    return Plan(c, SCHEMA_SYSTEM.format(schema=json.dumps(spec.schema_, ensure_ascii=False)))


def _tools_plan(tools: list[Tool], choice: ToolChoice) -> Plan:
    names = [t.function.name for t in tools]
    for i, n in enumerate(names):
        if not _NAME.match(n):
            raise ApiError(400, f"tools.{i}.function.name: letters, digits, _ and - only, "
                           "at most 64", f"tools.{i}.function.name")
        if n in names[:i]:
            raise ApiError(400, f"tools.{i}.function.name: {n!r} is given twice",
                           f"tools.{i}.function.name")
    fns = [t.function.model_dump(exclude_none=True) for t in tools]
    for i, f in enumerate(fns):  # each schema alone, so an error names its tool
        try:
            json_schema(f.get("parameters") or {"type": "object"})
        except ValueError as e:
            raise ApiError(400, f"tools.{i}.function.parameters: {e}",
                           f"tools.{i}.function.parameters") from None
    if choice == "none":  # the tools stay described, but the reply is text
        return Plan(None, toolcall.tools_system([t.model_dump(exclude_none=True)
                                                 for t in tools]))
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise ApiError(400, f"tool_choice: no tool named {choice.function.name!r} "
                           f"(tools: {names})", "tool_choice")
        fns = [f for f in fns if f["name"] == choice.function.name]
    described = [t.model_dump(exclude_none=True) for t in tools]
    try:
        c = toolcall.tool_constraint(fns, allow_text=choice == "auto")
    except ValueError as e:
        raise ApiError(400, f"tools: {e}", "tools") from None
    return Plan(c, toolcall.tools_system(described), tools=True, names=names)


def render_history(messages: list[Any]) -> list[dict[str, str]]:
    """Messages as template turns: an assistant's earlier `tool_calls` as the call text the
    model writes, a `tool` result as the user turn that hands it back."""
    out = []
    for m in messages:
        text = m.text()
        if m.role == "assistant" and m.tool_calls:
            calls = [toolcall.render_call(c.function.name, _args(c.function.arguments))
                     for c in m.tool_calls]
            text = "\n".join([text, *calls]) if text else "\n".join(calls)
        if m.role == "tool":
            out.append({"role": "user", "content": toolcall.render_response(text)})
        else:
            out.append({"role": m.role, "content": text})
    return out


def _args(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments  # written back as the string it was


def tool_reply(text: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(tool_calls in OpenAI's shape, None) for a call, else (None, the text)."""
    calls = toolcall.parse_tool_calls(text)
    if calls is None:
        return None, text
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["name"],
                          "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in calls], None
