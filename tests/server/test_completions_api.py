"""The legacy /v1/completions through the official `openai` client and through the exact
request lm-evaluation-harness's `local-completions` sends, against transformers on the HF
export of the same SmolLM2 weights."""

from __future__ import annotations

from operator import itemgetter

import httpx
import openai
import pytest
import torch

TEXT = "The capital of France is Paris. The capital of Italy is Rome."


@pytest.fixture(scope="module")
def client(server):  # noqa: ANN001, ANN201
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def ref(smol_hf):  # noqa: ANN001, ANN201
    return smol_hf


def ref_logp(ref, ids: list[int]) -> torch.Tensor:  # noqa: ANN001
    """transformers' log-distribution of the token after each position (T, vocab)."""
    with torch.no_grad():
        return ref(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_echo_logprobs_equal_transformers(client, lm, ref) -> None:  # noqa: ANN001
    ids = lm.tokenizer.encode(TEXT)
    r = client.completions.create(model="smollm2-135m-instruct", prompt=TEXT, echo=True,
                                  logprobs=5, max_tokens=0)
    c = r.choices[0]
    assert c.text == TEXT and r.usage.prompt_tokens == len(ids)
    lp = c.logprobs
    assert lp.tokens == [lm.tokenizer.decode([t]) for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    want = ref_logp(ref, ids)
    got = torch.tensor(lp.token_logprobs[1:])
    assert (got - want[:-1].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]).abs().max() <= 1e-4
    for j, top in enumerate(lp.top_logprobs[1:]):
        assert len(top) <= 5  # two ids may share a text
        vals = want[j].topk(5).values.tolist()
        assert abs(max(top.values()) - vals[0]) <= 1e-4
    assert lp.text_offset == [len(lm.tokenizer.decode(ids[:j])) for j in range(len(ids))]


def test_lm_eval_loglikelihood_request(server, lm, ref) -> None:  # noqa: ANN001
    """The payload of lm_eval/models/openai_completions.py `LocalCompletionsAPI.
    _create_payload(generate=False)`, with token-id prompts (its default tokenized_requests),
    parsed by that file's `LocalCompletionsAPI.parse_logprobs`, replicated here."""
    pairs = [("The capital of France is", " Paris"), ("2 + 2 =", " 5 apples")]
    tok = lm.tokenizer
    ctxs = [tok.encode(c) for c, _ in pairs]
    fulls = [tok.encode(c + x) for c, x in pairs]
    payload = {"model": "smollm2-135m-instruct", "prompt": fulls, "temperature": 0,
               "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": True}
    out = httpx.post(f"{server.url}/v1/completions", json=payload, timeout=120).json()
    res = []  # parse_logprobs, as in lm-eval:
    for choice, ctxlen in zip(sorted(out["choices"], key=itemgetter("index")),
                              [len(c) for c in ctxs], strict=True):
        logprobs = sum(choice["logprobs"]["token_logprobs"][ctxlen:-1])
        tokens_logprobs = choice["logprobs"]["token_logprobs"][ctxlen:-1]
        top_logprobs = choice["logprobs"]["top_logprobs"][ctxlen:-1]
        is_greedy = True
        for t, top in zip(tokens_logprobs, top_logprobs, strict=True):
            if t != max(top.values()):
                is_greedy = False
                break
        res.append((logprobs, is_greedy))
    for (got, greedy), ctx, full in zip(res, ctxs, fulls, strict=True):
        want = ref_logp(ref, full)
        cont = torch.tensor(full[len(ctx):])
        ll = want[len(ctx) - 1 : -1].gather(-1, cont[:, None])[:, 0]
        assert abs(got - ll.sum().item()) <= 1e-4 * len(cont)
        assert greedy == bool((want[len(ctx) - 1 : -1].argmax(-1) == cont).all())
    assert [g for _, g in res] == [True, False]  # " Paris" is SmolLM2's greedy choice


def test_generation_forms_seed_n_and_stream(client, lm, ref) -> None:  # noqa: ANN001
    kw = {"model": "smollm2-135m-instruct", "max_tokens": 6}
    ids = lm.tokenizer.encode("Once upon a time")
    # Token ids and text give the same greedy continuation; its logprobs are transformers'.
    a = client.completions.create(prompt=ids, temperature=0, logprobs=2, **kw).choices[0]
    b = client.completions.create(prompt="Once upon a time", temperature=0, **kw).choices[0]
    assert a.text == b.text and a.logprobs.token_logprobs and b.logprobs is None
    gen = lm.tokenizer.encode("Once upon a time" + a.text)[len(ids):]
    want = ref_logp(ref, ids + gen)
    for j, v in enumerate(a.logprobs.token_logprobs[: len(gen)]):
        assert abs(v - want[len(ids) + j - 1, gen[j]].item()) <= 1e-4
    # A list of prompts x n, seeded: reproducible, in OpenAI's index order, choices differ.
    sampled = {"prompt": ["Once upon a time", "def fib(n):"], "n": 2, "seed": 5,
               "temperature": 1.0, **kw}
    r1 = client.completions.create(**sampled)
    r2 = client.completions.create(**sampled)
    assert [c.index for c in r1.choices] == [0, 1, 2, 3]
    assert [c.text for c in r1.choices] == [c.text for c in r2.choices]
    assert r1.choices[0].text != r1.choices[1].text
    # Streamed under the same seed: the same text per choice, then usage.
    parts = ["", "", "", ""]
    usage = None
    for ch in client.completions.create(stream=True, stream_options={"include_usage": True},
                                        **sampled):
        for c in ch.choices:
            parts[c.index] += c.text
        usage = ch.usage or usage
    assert parts == [c.text for c in r1.choices]
    assert usage.completion_tokens == r1.usage.completion_tokens


def test_completions_errors_name_the_field(client) -> None:  # noqa: ANN001
    kw = {"model": "smollm2-135m-instruct"}
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.completions.create(prompt="hi", logprobs=6, **kw)
    assert e.value.body["param"] == "logprobs"
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.completions.create(prompt=[[1], "mixed"], **kw)
    assert e.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(prompt=[10**6], **kw)
    assert e.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(prompt="", **kw)
    assert e.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(prompt="hi", max_tokens=10**6, **kw)
    assert e.value.body["param"] == "max_tokens"
