"""/v1/responses through the official `openai` client (`client.responses.create`), plain
and streamed, against the same request through /v1/chat/completions."""

from __future__ import annotations

import openai
import pytest

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def client(server):  # noqa: ANN001, ANN201
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_responses_text_and_stream(client) -> None:  # noqa: ANN001
    kw = {"model": MODEL, "instructions": "Answer in one short sentence.", "temperature": 0,
          "max_output_tokens": 12}
    r = client.responses.create(input="What is the capital of France?", **kw)
    chat = client.chat.completions.create(
        model=MODEL, temperature=0, max_completion_tokens=12,
        messages=[{"role": "system", "content": kw["instructions"]},
                  {"role": "user", "content": "What is the capital of France?"}])
    assert r.output_text == chat.choices[0].message.content and "Paris" in r.output_text
    assert r.status in ("completed", "incomplete") and r.output[0].role == "assistant"
    assert r.usage.output_tokens == chat.usage.completion_tokens
    assert r.usage.input_tokens == chat.usage.prompt_tokens

    # Messages (a developer turn reads as a system one) give the same answer.
    msgs = [{"role": "developer", "content": kw["instructions"]},
            {"role": "user", "content": [{"type": "input_text",
                                          "text": "What is the capital of France?"}]}]
    m = client.responses.create(input=msgs, **{k: v for k, v in kw.items()
                                               if k != "instructions"})
    assert m.output_text == r.output_text

    events = list(client.responses.create(input="What is the capital of France?", stream=True,
                                          **kw))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == r.output_text == events[-1].response.output_text
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == r.output_text


def test_responses_errors_name_the_field(client) -> None:  # noqa: ANN001
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="hi", max_output_tokens=10**6)
    assert e.value.body["param"] == "max_output_tokens"
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="gpt-9", input="hi")
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.responses.create(model=MODEL, input="hi", temperature=3)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.responses.create(model=MODEL, input=[{"role": "bot", "content": "hi"}])
    assert e.value.body["param"] == "input" and "0.role" in e.value.body["message"]
