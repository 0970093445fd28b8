"""/v1/chat/completions' logprobs, n, seed, stream_options and max_completion_tokens through
the official `openai` client; logprobs against transformers on the HF export."""

from __future__ import annotations

import openai
import pytest
import torch

from llmlab.generate.chat import template_for

MODEL = "smollm2-135m-instruct"
MSGS = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def client(server):  # noqa: ANN001, ANN201
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_logprobs_equal_transformers_greedy(client, lm, smol_hf) -> None:  # noqa: ANN001
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert "".join(e.token for e in content) == r.choices[0].message.content
    ids = template_for(lm).encode(lm.tokenizer, MSGS, None, prefill="")
    for e in content:  # transformers' greedy continuation, one token at a time
        with torch.no_grad():
            logp = smol_hf(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
        tv, ti = logp.topk(3)
        assert e.token == lm.tokenizer.decode([ti[0].item()])
        assert bytes(e.bytes) == lm.tokenizer.decode_bytes([ti[0].item()])
        assert abs(e.logprob - tv[0].item()) <= 1e-4
        assert [abs(t.logprob - v) <= 1e-4 for t, v in zip(e.top_logprobs, tv.tolist(),
                                                           strict=True)] == [True] * 3
        ids.append(ti[0].item())


def test_seeded_n_stream_and_usage(client) -> None:  # noqa: ANN001
    kw = {"model": MODEL, "messages": MSGS, "max_completion_tokens": 8, "temperature": 1.0,
          "seed": 11, "n": 3, "logprobs": True, "top_logprobs": 2}
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    texts = [c.message.content for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in b.choices]  # same seed, same output
    assert len(set(texts)) > 1  # each choice its own sample
    assert a.usage.completion_tokens <= 3 * 8
    # Streamed under the same seed: the same tokens and logprobs per choice, then usage.
    text, toks = ["", "", ""], [[], [], []]
    finish, last = [None] * 3, None
    for ch in client.chat.completions.create(stream=True,
                                             stream_options={"include_usage": True}, **kw):
        last = ch
        for c in ch.choices:
            text[c.index] += c.delta.content or ""
            toks[c.index] += [(e.token, e.logprob) for e in (c.logprobs.content
                                                             if c.logprobs else [])]
            finish[c.index] = c.finish_reason or finish[c.index]
    assert text == texts
    assert toks == [[(e.token, e.logprob) for e in c.logprobs.content] for c in a.choices]
    assert finish == [c.finish_reason for c in a.choices]
    assert last.choices == [] and last.usage.total_tokens == a.usage.total_tokens


def test_chat_extras_errors_name_the_field(client) -> None:  # noqa: ANN001
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS, max_completion_tokens=10**6)
    assert e.value.body["param"] == "max_completion_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS, top_logprobs=2)
    assert e.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS, logprobs=True,
                                       top_logprobs=21)
    assert e.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS, n=9)
    assert e.value.body["param"] == "n"
