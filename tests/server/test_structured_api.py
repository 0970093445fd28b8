"""Structured outputs over HTTP through the official `openai` client: response_format
json_schema / json_object and tools / tool_choice, decoded under a grammar (no repair pass).
Outside references: `jsonschema.validate` on every output, each call's arguments against
its tool's parameters schema."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest

MODEL = "smollm2-135m-instruct"
SCHEMAS = {
    "city": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20},
                       "country": {"type": "string", "maxLength": 20},
                       "population": {"type": "integer", "minimum": 0, "maximum": 40000000}},
        "required": ["city", "country", "population"], "additionalProperties": False,
    },
    "trip": {  # nested objects, an array with minItems, enums
        "type": "object",
        "properties": {
            "stops": {"type": "array", "minItems": 2, "maxItems": 3,
                      "items": {"type": "object",
                                "properties": {"name": {"type": "string", "maxLength": 12},
                                               "days": {"type": "integer", "minimum": 1,
                                                        "maximum": 9}},
                                "required": ["name", "days"], "additionalProperties": False}},
            "mode": {"enum": ["train", "car", "plane"]},
        },
        "required": ["stops", "mode"], "additionalProperties": False,
    },
}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "maxLength": 24},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object",
                   "properties": {"a": {"type": "integer", "minimum": -999, "maximum": 999},
                                  "b": {"type": "integer", "minimum": -999, "maximum": 999}},
                   "required": ["a", "b"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def client(server):  # noqa: ANN001, ANN201
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _fmt(name: str) -> dict:
    return {"type": "json_schema",
            "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}


def _ask(client, name: str, **kw):  # noqa: ANN001, ANN202
    msgs = [{"role": "user", "content": f"Give me a {name} as JSON."}]
    return client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=64,
                                          response_format=_fmt(name), **kw)


def test_json_schema_outputs_validate(client) -> None:  # noqa: ANN001
    """Each schema greedy and at temperature 1 with a seed, sent at once (one batch)."""
    jobs = [(n, kw) for n in SCHEMAS for kw in ({"temperature": 0}, {"temperature": 1, "seed": 5})]
    with ThreadPoolExecutor(len(jobs)) as pool:
        outs = list(pool.map(lambda j: _ask(client, j[0], **j[1]), jobs))
    for (name, _), r in zip(jobs, outs, strict=True):
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMAS[name])


def test_unconstrained_reply_fails_the_schema_constrained_passes(client) -> None:  # noqa: ANN001
    msgs = [{"role": "user", "content": "Plan a trip as JSON."}]
    free = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=48,
                                          temperature=0).choices[0].message.content
    with pytest.raises((ValueError, jsonschema.ValidationError)):
        jsonschema.validate(json.loads(free), SCHEMAS["trip"])
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=64,
                                       temperature=0, response_format=_fmt("trip"))
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMAS["trip"])


def test_json_schema_streams_the_same_tokens(client) -> None:  # noqa: ANN001
    whole = _ask(client, "city", temperature=0).choices[0].message.content
    chunks = list(_ask(client, "city", temperature=0, stream=True))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 3  # token by token, not one repaired blob
    assert "".join(pieces) == whole
    jsonschema.validate(json.loads(whole), SCHEMAS["city"])


def test_bad_schema_is_a_400_naming_it(server) -> None:  # noqa: ANN001
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "object",
                                        "properties": {"a": {"type": "strnig"}}}}}}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "response_format.json_schema.schema" and "strnig" in err["message"]
    body["response_format"] = {"type": "json_schema"}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format.json_schema"


def _call(client, tools, choice, q: str = "What is the weather in Paris?", **kw):  # noqa: ANN001, ANN202
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": q}], max_tokens=48,
        temperature=kw.pop("temperature", 0), tools=tools, tool_choice=choice, **kw)


def test_tool_calls_required_and_named_validate(client) -> None:  # noqa: ANN001
    named = {"type": "function", "function": {"name": "add"}}
    with ThreadPoolExecutor(3) as pool:
        rs = list(pool.map(lambda a: _call(client, [WEATHER, ADD], *a), [
            ("required", "What is the weather in Paris?"),
            ("required", "Weather in Oslo, in fahrenheit?", ),
            (named, "What is 12 plus 30?")]))
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, ADD)}
    for r, want in zip(rs, (None, None, "add"), strict=True):
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls" and ch.message.content is None
        (call,) = ch.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_")
        assert want is None or call.function.name == want
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_tool_choice_none_gives_text_and_auto_either(client) -> None:  # noqa: ANN001
    r = _call(client, [WEATHER], "none")
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content
    r = _call(client, [WEATHER], "auto", temperature=1, seed=0)
    m = r.choices[0].message
    if m.tool_calls:  # the model's choice; either way it is well formed
        args = json.loads(m.tool_calls[0].function.arguments)
        jsonschema.validate(args, WEATHER["function"]["parameters"])
    else:
        assert m.content and not m.content.startswith("<tool_call>")


def test_tool_result_follow_up_and_streamed_call(client) -> None:  # noqa: ANN001
    first = _call(client, [WEATHER], "required").choices[0].message
    call = first.tool_calls[0]
    msgs = [{"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21, "sky": "sunny"}'}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, tools=[WEATHER],
                                       max_tokens=24, temperature=0)
    assert r.choices[0].message.content  # a text answer (auto: it may also call again)
    chunks = list(_call(client, [WEATHER], "required", stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].function.name == "get_weather"
    assert json.loads(deltas[0].function.arguments) == json.loads(call.function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_errors_name_the_field(client) -> None:  # noqa: ANN001
    msgs = [{"role": "user", "content": "hi"}]
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, max_tokens=8, messages=msgs, tools=[bad])
    assert e.value.body["param"] == "tools.0.function.parameters"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, max_tokens=8, messages=msgs, tools=[WEATHER],
                                       tool_choice={"type": "function",
                                                    "function": {"name": "nope"}})
    assert e.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, max_tokens=8, tool_choice="required",
                                       messages=msgs)
    assert e.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, max_tokens=8, tools=[WEATHER], messages=[
            *msgs, {"role": "tool", "content": "x", "tool_call_id": ""}])
    assert e.value.body["param"] == "messages.1.tool_call_id"


def test_decoding_page_mask_trace(server) -> None:  # noqa: ANN001
    """/api/decode/constrained: each step's allowed-token count and the chosen token; the
    output validates, and the steps show the mask overriding the model at least once."""
    schema = SCHEMAS["city"]
    r = httpx.post(f"{server.url}/api/decode/constrained", timeout=120, json={
        "text": "Name a big city.", "json_schema": schema, "max_tokens": 40})
    assert r.status_code == 200, r.text
    out = r.json()
    jsonschema.validate(json.loads(out["text"]), schema)
    steps = out["steps"]
    assert "".join(s["token"]["piece"] for s in steps[:-1]) == out["text"]
    assert all(1 <= s["allowed"] <= out["vocab"] for s in steps)
    assert steps[-1]["allowed"] == 1  # the object is closed: only the stop token
    assert any(not s["free_choice"]["allowed"] for s in steps)
    r = httpx.post(f"{server.url}/api/decode/constrained", timeout=30, json={
        "text": "x", "json_schema": {"type": "nope"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "json_schema"
