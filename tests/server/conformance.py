"""The OpenAI-API conformance table: one row per endpoint x feature, each driven by the
official `openai` client (test_conformance.py runs every row), and the README's table is
rendered from this list (`python scripts/conformance.py`), so the two cannot drift.

A row is (endpoint, feature, check, deeper test). `check(client)` makes the real request and
asserts what the spec promises; the deeper test compares numbers with an outside reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

M = "smollm2-135m-instruct"
HI = [{"role": "user", "content": "Say hi."}]


@dataclass
class Row:
    endpoint: str
    feature: str
    check: Callable[[Any], None]
    deeper: str = ""  # the test file that checks it in depth
    supported: str = "yes"


def _chat(c: Any, **kw: Any) -> Any:
    return c.chat.completions.create(model=M, messages=HI, **{"max_tokens": 3, **kw})


def _chat_basic(c: Any) -> None:
    r = _chat(c, temperature=0.7, top_p=0.9)
    assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens <= 3


def _chat_stream(c: Any) -> None:
    chunks = list(_chat(c, stream=True, temperature=0))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == \
        _chat(c, temperature=0).choices[0].message.content


def _chat_stop(c: Any) -> None:
    text = _chat(c, temperature=0, max_tokens=8).choices[0].message.content
    r = _chat(c, temperature=0, max_tokens=8, stop=[text[2:4]]).choices[0]
    assert r.finish_reason == "stop" and text[2:4] not in r.message.content


def _chat_seed(c: Any) -> None:
    a, b = (_chat(c, temperature=1.0, seed=4, max_tokens=6) for _ in range(2))
    assert a.choices[0].message.content == b.choices[0].message.content


def _chat_n(c: Any) -> None:
    r = _chat(c, n=3, temperature=1.0, seed=1)
    assert [ch.index for ch in r.choices] == [0, 1, 2]


def _chat_logprobs(c: Any) -> None:
    ch = _chat(c, logprobs=True, top_logprobs=2, temperature=0).choices[0]
    assert "".join(e.token for e in ch.logprobs.content) == ch.message.content
    assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in ch.logprobs.content)


def _chat_logprobs_stream(c: Any) -> None:
    got = [e.token for ch in _chat(c, logprobs=True, stream=True, temperature=0)
           for e in (ch.choices[0].logprobs.content if ch.choices[0].logprobs else [])]
    assert got == [e.token for e in _chat(c, logprobs=True, temperature=0)
                   .choices[0].logprobs.content]


def _chat_usage_chunk(c: Any) -> None:
    last = list(_chat(c, stream=True, stream_options={"include_usage": True}))[-1]
    assert last.choices == [] and last.usage.total_tokens > 0


def _chat_max_completion(c: Any) -> None:
    r = c.chat.completions.create(model=M, messages=HI, max_completion_tokens=2)
    assert r.usage.completion_tokens <= 2


def _chat_json(c: Any) -> None:
    import json

    r = _chat(c, response_format={"type": "json_object"}, max_tokens=48, temperature=0)
    assert isinstance(json.loads(r.choices[0].message.content), dict)


CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                         "people": {"type": "integer", "minimum": 0}},
        "required": ["city", "people"], "additionalProperties": False}


def _chat_json_schema(c: Any) -> None:
    import json

    import jsonschema

    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY,
                                                  "strict": True}}
    r = _chat(c, response_format=fmt, max_tokens=48, temperature=0)
    jsonschema.validate(json.loads(r.choices[0].message.content), CITY)


def _chat_tools(c: Any) -> None:
    import json

    import jsonschema

    tool = {"type": "function", "function": {"name": "population", "parameters": CITY}}
    r = _chat(c, tools=[tool], tool_choice="required", max_tokens=64, temperature=0)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.tool_calls[0].type == "function"
    call = ch.message.tool_calls[0].function
    assert call.name == "population"
    jsonschema.validate(json.loads(call.arguments), CITY)


def _chat_errors(c: Any) -> None:
    import openai

    try:
        _chat(c, top_p=0)
    except openai.UnprocessableEntityError as e:
        assert e.body["param"] == "top_p" and e.body["type"]
    else:
        raise AssertionError("top_p=0 was accepted")


def _chat_unsupported(c: Any) -> None:
    import openai

    for kw in ({"presence_penalty": 0.5}, {"frequency_penalty": 1.0}, {"logit_bias": {"9": 5}}):
        try:
            _chat(c, **kw)
        except openai.BadRequestError as e:
            assert e.body["param"] == next(iter(kw)) and "not supported" in e.body["message"]
        else:
            raise AssertionError(f"{kw} was accepted and ignored")
    _chat(c, presence_penalty=0, frequency_penalty=0)  # the no-op values are fine


def _cmpl(c: Any, **kw: Any) -> Any:
    return c.completions.create(model=M, **{"max_tokens": 3, **kw})


def _cmpl_forms(c: Any) -> None:
    r = _cmpl(c, prompt=["Hello", "The sky is"], temperature=0)
    assert [ch.index for ch in r.choices] == [0, 1]
    ids = [[19556], [504, 6376, 314]]  # "Hello", "The sky is" in SmolLM2's vocabulary
    assert [ch.text for ch in _cmpl(c, prompt=ids, temperature=0).choices] == \
        [ch.text for ch in r.choices]
    assert _cmpl(c, prompt=ids[1], temperature=0).choices[0].text == r.choices[1].text


def _cmpl_echo(c: Any) -> None:
    lp = _cmpl(c, prompt="The sky is blue.", echo=True, logprobs=1, max_tokens=0)
    lp = lp.choices[0].logprobs
    assert lp.token_logprobs[0] is None and all(v < 0 for v in lp.token_logprobs[1:])
    assert len(lp.tokens) == len(lp.text_offset) == len(lp.top_logprobs)


def _cmpl_stream(c: Any) -> None:
    text = "".join(ch.choices[0].text for ch in _cmpl(c, prompt="Once", stream=True,
                                                       temperature=0))
    assert text == _cmpl(c, prompt="Once", temperature=0).choices[0].text


def _cmpl_seed_n(c: Any) -> None:
    a, b = (_cmpl(c, prompt="Once", n=2, seed=3, temperature=1.0) for _ in range(2))
    assert [x.text for x in a.choices] == [x.text for x in b.choices]


def _resp(c: Any) -> None:
    r = c.responses.create(model=M, input="Say hi.", max_output_tokens=3, temperature=0)
    assert r.output_text and r.output[0].content[0].type == "output_text"


def _resp_messages(c: Any) -> None:
    r = c.responses.create(model=M, instructions="Be brief.", max_output_tokens=3,
                           input=[{"role": "user", "content": "Say hi."}])
    assert r.output_text


def _resp_stream(c: Any) -> None:
    ev = list(c.responses.create(model=M, input="Say hi.", max_output_tokens=3, stream=True))
    assert ev[0].type == "response.created" and ev[-1].type.startswith("response.")
    assert "".join(e.delta for e in ev if e.type == "response.output_text.delta") == \
        ev[-1].response.output_text


def _resp_json_schema(c: Any) -> None:
    import json

    import jsonschema

    fmt = {"type": "json_schema", "name": "city", "schema": CITY, "strict": True}
    r = c.responses.create(model=M, input="Name a city.", max_output_tokens=48,
                           temperature=0, text={"format": fmt})
    jsonschema.validate(json.loads(r.output_text), CITY)


def _models(c: Any) -> None:
    assert M in {m.id for m in c.models.list()}


def _embed(c: Any) -> None:
    assert len(c.embeddings.create(model="minilm-l6-v2", input="hi").data[0].embedding) == 384


def _embed_float(c: Any) -> None:
    r = c.embeddings.create(model="minilm-l6-v2", input=["a", "b"], encoding_format="float")
    assert [len(d.embedding) for d in r.data] == [384, 384]


CHAT, CMPL, RESP = "/v1/chat/completions", "/v1/completions", "/v1/responses"
ROWS = [
    Row("/v1/models", "list", _models),
    Row(CHAT, "messages, temperature, top_p, max_tokens", _chat_basic,
        "test_api.py"),
    Row(CHAT, "stream", _chat_stream, "test_api.py"),
    Row(CHAT, "stop", _chat_stop),
    Row(CHAT, "seed (same seed, same output)", _chat_seed, "test_chat_extras_api.py"),
    Row(CHAT, "n (up to 8)", _chat_n, "test_chat_extras_api.py"),
    Row(CHAT, "logprobs + top_logprobs (0-20)", _chat_logprobs, "test_chat_extras_api.py"),
    Row(CHAT, "logprobs, streamed", _chat_logprobs_stream, "test_chat_extras_api.py"),
    Row(CHAT, "stream_options.include_usage", _chat_usage_chunk, "test_chat_extras_api.py"),
    Row(CHAT, "max_completion_tokens", _chat_max_completion, "test_chat_extras_api.py"),
    Row(CHAT, "response_format json_object", _chat_json, "test_api.py"),
    Row(CHAT, "response_format json_schema (strict), by grammar", _chat_json_schema,
        "test_structured_api.py"),
    Row(CHAT, "tools + tool_choice (auto, none, required, named)", _chat_tools,
        "test_structured_api.py"),
    Row(CHAT, "errors name the field (`param`)", _chat_errors, "test_api.py"),
    Row(CHAT, "frequency_penalty, presence_penalty, logit_bias", _chat_unsupported,
        supported="no: a non-zero value is a 400 naming the field"),
    Row(CMPL, "prompt: string, list, token ids", _cmpl_forms, "test_completions_api.py"),
    Row(CMPL, "echo + logprobs (0-5), max_tokens=0", _cmpl_echo, "test_completions_api.py"),
    Row(CMPL, "stream", _cmpl_stream, "test_completions_api.py"),
    Row(CMPL, "n + seed", _cmpl_seed_n, "test_completions_api.py"),
    Row(RESP, "input string, output_text", _resp, "test_responses_api.py"),
    Row(RESP, "input messages + instructions", _resp_messages, "test_responses_api.py"),
    Row(RESP, "stream events", _resp_stream, "test_responses_api.py"),
    Row(RESP, "text.format json_schema", _resp_json_schema, "test_conformance.py"),
    Row("/v1/embeddings", "input, base64 (the client's default)", _embed,
        "test_embeddings_api.py"),
    Row("/v1/embeddings", "encoding_format float", _embed_float, "test_embeddings_api.py"),
]

BEGIN = "<!-- conformance:begin (python scripts/conformance.py) -->"
END = "<!-- conformance:end -->"


def render(rows: list[Row] = ROWS) -> str:
    """The README's table: every row is a passing test in test_conformance.py."""
    lines = ["| endpoint | feature | supported | checked by |", "|---|---|---|---|"]
    for r in rows:
        deeper = f"; in depth: `{r.deeper}`" if r.deeper else ""
        lines.append(f"| `{r.endpoint}` | {r.feature} | {r.supported} | the `openai` client, "
                     f"`test_conformance.py::test_row[{r.check.__name__}]`{deeper} |")
    return "\n".join([BEGIN, *lines, END])
