"""Token logprobs (generate/logprobs.py, score.py) against an outside reference:
transformers' forward pass on the HF export of the same weights."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from next_token_ref import tiny_llama

from llmlab.generate.batcher import Batcher
from llmlab.generate.engine import complete, make_params
from llmlab.generate.score import prompt_logprobs

TEXT = "Classes provide a means of bundling data and functionality together. Café → ünïcode!"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimpleNamespace, torch.nn.Module]:
    return tiny_llama(tmp_path_factory.mktemp("hf") / "tiny")


def hf_logp(ref: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """transformers' (T, vocab) log-distribution of the token after each position."""
    with torch.no_grad():
        return ref(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def check(got: list, ids: list[int], ref_logp: torch.Tensor, k: int) -> None:
    """`got[j]` is the TokenLogprob of ids[start + j], predicted at position start + j - 1."""
    start = len(ids) - len(got)
    for j, g in enumerate(got):
        pos = start + j
        want = ref_logp[pos - 1]
        assert g.token == ids[pos]
        assert abs(g.logprob - want[ids[pos]].item()) <= 1e-4
        tv, _ = want.topk(k)
        assert len(g.top) == k
        assert max(abs(v - w) for (_, v), w in zip(g.top, tv.tolist(), strict=True)) <= 1e-4
        # each alternative's logprob is its own, whatever order near-ties take
        assert max(abs(v - want[i].item()) for i, v in g.top) <= 1e-4


def test_prompt_logprobs_equal_transformers(tiny) -> None:
    lm, ref = tiny
    ids = lm.tokenizer.encode(TEXT)
    got = prompt_logprobs(lm.model, ids, top=5)
    assert got[0] is None and len(got) == len(ids)
    check(got[1:], ids, hf_logp(ref, ids), k=5)
    assert [g.top for g in prompt_logprobs(lm.model, ids)[1:]] == [[]] * (len(ids) - 1)
    with pytest.raises(ValueError, match="top"):
        prompt_logprobs(lm.model, ids, top=21)


def test_sampled_logprobs_are_the_raw_distribution(tiny) -> None:
    """Sampled at temperature 0.7 / top_p 0.9, the logprobs are still the model's own
    log_softmax (before those settings), as vLLM and OpenAI report them."""
    lm, ref = tiny
    prompt = lm.tokenizer.encode("Classes provide")
    params = make_params(lm.tokenizer, max_new_tokens=12, temperature=0.7, top_p=0.9, seed=3,
                         logprobs=4)
    (out,) = complete(lm.model, lm.tokenizer, [prompt], params)
    assert out.logprobs is not None and len(out.logprobs) == len(out.token_ids) > 0
    ids = prompt + out.token_ids
    check(out.logprobs, ids, hf_logp(ref, ids), k=4)
    off = make_params(lm.tokenizer, max_new_tokens=4, temperature=0)
    assert complete(lm.model, lm.tokenizer, [prompt], off)[0].logprobs is None


def test_batcher_streams_the_same_logprobs(tiny) -> None:
    lm, _ = tiny
    prompt = lm.tokenizer.encode("A class is")
    params = make_params(lm.tokenizer, max_new_tokens=10, temperature=1.0, seed=7, logprobs=2)
    (alone,) = complete(lm.model, lm.tokenizer, [prompt], params)
    b = Batcher(lm.model, lm.tokenizer)
    try:
        h = b.submit(prompt, params)
        streamed = [lp for piece in h for lp in piece.logprobs]
    finally:
        b.close()
    res = h.result
    assert res is not None and res.token_ids == alone.token_ids
    assert [s.token for s in streamed] == res.token_ids
    assert [s.logprob for s in streamed] == [r.logprob for r in res.logprobs]
    for a, s in zip(alone.logprobs, streamed, strict=True):
        assert abs(a.logprob - s.logprob) <= 1e-5 and [i for i, _ in a.top] == [i for i, _ in s.top]


def test_the_lean_cpu_decoder_gives_the_same_logprobs(tiny) -> None:
    """int8 at batch 1 takes generate/fast/cpu.py's lean step: its logprobs are the int8
    model's own forward's (the reference for that path), to within the lean step's bf16
    activations (a few 1e-3 here)."""
    import copy

    from llmlab.generate.fast import lean_decoder
    from llmlab.model.quant import quantize_int8_

    lm, _ = tiny
    q = quantize_int8_(copy.deepcopy(lm.model))
    prompt = lm.tokenizer.encode("Classes provide")
    params = make_params(lm.tokenizer, max_new_tokens=8, temperature=0, logprobs=3)
    assert lean_decoder(q, [prompt], params, return_logits=True) is not None
    (out,) = complete(q, lm.tokenizer, [prompt], params)
    ids = prompt + out.token_ids
    with torch.no_grad():
        want = q(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    for j, g in enumerate(out.logprobs):
        row = want[len(prompt) + j - 1]
        assert abs(g.logprob - row[g.token].item()) <= 2e-2
        # ids may swap where a random model's alternatives nearly tie: compare values
        tv = row.topk(3).values.tolist()
        assert max(abs(v - w) for (_, v), w in zip(g.top, tv, strict=True)) <= 2e-2
        assert max(abs(v - row[i].item()) for i, v in g.top) <= 2e-2
