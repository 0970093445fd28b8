"""Continuous batching (llmlab.generate.batcher) on the real SmolLM2: requests that join a
running batch, with their own budgets, stop strings and sampling settings, get exactly the
tokens they get alone (our one-request engine) and, greedy, what transformers' `generate`
gives; a cancelled request leaves the batch at once."""

from __future__ import annotations

import os
import time

import pytest
import torch

from llmlab.generate.batcher import Batcher
from llmlab.generate.chat import chat_ids
from llmlab.generate.engine import complete, make_params

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain in one long sentence what a key-value cache does inside a transformer model.",
]
BUDGETS = [12, 24, 6, 18]  # rows finish at different steps


@pytest.fixture(scope="module")
def smol():  # noqa: ANN201
    import llmlab

    return llmlab.load("smollm2-135m-instruct")


def _prompts(smol) -> list[list[int]]:  # noqa: ANN001
    return [chat_ids(smol, [{"role": "user", "content": q}]) for q in QUESTIONS]


def _alone(smol, prompt: list[int], params) -> object:  # noqa: ANN001
    """The one-request engine, already tested against transformers."""
    return complete(smol.model, smol.tokenizer, [prompt], params)[0]


def _run_staggered(b: Batcher, prompts: list[list[int]], params: list) -> list:  # noqa: ANN001
    """Submit two, wait until they are decoding, then submit the rest into the live batch."""
    hs = [b.submit(p, pr) for p, pr in zip(prompts[:2], params[:2], strict=True)]
    first = iter(hs[0])
    next(first)  # request 0 has produced text: the batch is running
    hs += [b.submit(p, pr) for p, pr in zip(prompts[2:], params[2:], strict=True)]
    outs = [h.text() for h in hs[1:]]
    for _ in first:
        pass
    return [hs[0].result, *outs]


def test_joined_batch_greedy_equals_alone_and_transformers(smol) -> None:  # noqa: ANN001
    from transformers import AutoModelForCausalLM

    from llmlab.weights.registry import _smollm2_file

    prompts = _prompts(smol)
    params = [
        make_params(smol.tokenizer, max_new_tokens=n, temperature=0, stop=["<|im_end|>"])
        for n in BUDGETS
    ]
    params[1].stop = ["\n"]  # a stop string on one row only
    alone = [_alone(smol, p, pr) for p, pr in zip(prompts, params, strict=True)]
    b = Batcher(smol.model, smol.tokenizer, max_batch=4)
    try:
        got = _run_staggered(b, prompts, params)
        stats = b.snapshot()
    finally:
        b.close()
    assert stats["peak_rows"] >= 3  # rows really decoded together
    for a, g in zip(alone, got, strict=True):
        assert (g.text, g.token_ids, g.finish_reason) == (a.text, a.token_ids, a.finish_reason)
    assert "\n" not in got[1].text and got[1].finish_reason == "stop"

    p = _smollm2_file()
    hf = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    for i, (prompt, n, g) in enumerate(zip(prompts, BUDGETS, got, strict=True)):
        with torch.no_grad():
            out = hf.eval().generate(
                torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=2
            )[0, len(prompt) :].tolist()
        ref = [t for t in out if t != 2]  # generate stops at EOS and keeps it; we drop it
        assert g.token_ids == ref[: len(g.token_ids)]
        if i != 1:  # row 1 was cut by a stop string, which transformers doesn't get
            assert len(g.token_ids) == len(ref)


def test_per_request_sampling_settings_in_one_batch(smol) -> None:  # noqa: ANN001
    prompts = _prompts(smol)
    kws = [
        dict(temperature=0.8, top_k=40, seed=1),
        dict(temperature=1.0, top_p=0.9, seed=2),
        dict(temperature=0),
        dict(temperature=0.7, min_p=0.05, repetition_penalty=1.3, seed=3),
    ]
    params = [
        make_params(smol.tokenizer, max_new_tokens=n, stop=["<|im_end|>"], **kw)
        for n, kw in zip(BUDGETS, kws, strict=True)
    ]
    alone = [_alone(smol, p, pr) for p, pr in zip(prompts, params, strict=True)]
    b = Batcher(smol.model, smol.tokenizer)
    try:
        got = _run_staggered(b, prompts, params)
    finally:
        b.close()
    for a, g in zip(alone, got, strict=True):
        assert g.token_ids == a.token_ids and g.text == a.text


def test_cancel_frees_the_slot_and_token_cap_queues(smol) -> None:  # noqa: ANN001
    prompts = _prompts(smol)
    long = make_params(smol.tokenizer, max_new_tokens=200, temperature=0)
    short = make_params(smol.tokenizer, max_new_tokens=8, temperature=0, stop=["<|im_end|>"])
    # Room for one row only: the second request waits for the first to leave.
    b = Batcher(smol.model, smol.tokenizer, max_batch_tokens=len(prompts[3]) + 200)
    try:
        h1 = b.submit(prompts[3], long)
        h2 = b.submit(prompts[0], short)
        for i, _ in enumerate(h1):
            if i == 2:
                break  # leaving the loop cancels the request
        assert h2.text().text == _alone(smol, prompts[0], short).text
        deadline = time.time() + 60
        while b.snapshot()["rows"] and time.time() < deadline:
            time.sleep(0.05)
        stats = b.snapshot()
    finally:
        b.close()
    assert h1.result is not None and h1.result.finish_reason == "cancelled"
    assert len(h1.result.token_ids) < 20  # it stopped long before its 200-token budget
    assert stats["cancelled"] == 1 and stats["rows"] == 0 and stats["peak_rows"] == 1


def test_long_prompt_prefilled_in_chunks_matches_alone(smol) -> None:  # noqa: ANN001
    """A prompt several chunks long is prefilled a chunk per step while other rows decode."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "README.md").read_text()[:2500]
    long_q = f"{doc}\n\nIn one sentence, what is this project?"
    prompts = [chat_ids(smol, [{"role": "user", "content": q}]) for q in (QUESTIONS[1], long_q)]
    assert len(prompts[1]) > 3 * 128
    params = [
        make_params(smol.tokenizer, max_new_tokens=n, temperature=0, stop=["<|im_end|>"])
        for n in (30, 16)
    ]
    alone = [_alone(smol, p, pr) for p, pr in zip(prompts, params, strict=True)]
    b = Batcher(smol.model, smol.tokenizer, prefill_chunk=128)
    try:
        h0 = b.submit(prompts[0], params[0])
        it = iter(h0)
        next(it)  # row 0 is decoding
        h1 = b.submit(prompts[1], params[1])
        steps_before = b.snapshot()["steps"]
        got1 = h1.text()
        for _ in it:
            pass
        stats = b.snapshot()
    finally:
        b.close()
    assert h0.result.token_ids == alone[0].token_ids
    assert got1.token_ids == alone[1].token_ids and got1.text == alone[1].text
    assert stats["steps"] - steps_before >= 3  # row 0 kept decoding during the long prefill


def test_admission_is_first_come_first_served(smol) -> None:  # noqa: ANN001
    """A big request that must wait for room is not overtaken by the small ones queued after
    it, though each of them would fit beside the running row at once (no starvation)."""
    prompts = _prompts(smol)
    short = max(len(p) for p in prompts[:3])
    running = make_params(smol.tokenizer, max_new_tokens=40, temperature=0)
    big = make_params(smol.tokenizer, max_new_tokens=60, temperature=0)
    small = make_params(smol.tokenizer, max_new_tokens=4, temperature=0)
    # Room for the running row plus one small request, never for the big one beside it.
    cap = 2 * (short + 40)
    assert 2 * (max(short, len(prompts[3])) + 60) > cap
    b = Batcher(smol.model, smol.tokenizer, max_batch_tokens=cap)
    try:
        h0 = b.submit(prompts[0], running)
        it = iter(h0)
        next(it)  # decoding: the big request cannot join until it leaves
        hb = b.submit(prompts[3], big)
        hs = [b.submit(prompts[1 + i % 2], small) for i in range(6)]
        for h in [*hs, hb]:
            h.text()
        for _ in it:
            pass
    finally:
        b.close()
    order = [hb.admitted, *(h.admitted for h in hs)]
    assert h0.admitted == 1 and order == sorted(order) and len(set(order)) == 7, order
    assert hb.result is not None and len(hb.result.token_ids) > 0


def _within(fn, seconds: float):  # noqa: ANN001, ANN202
    """fn() in a daemon thread; its result, or its exception raised here; a hang fails the
    test (a daemon thread, unlike an executor's, is not waited for at exit)."""
    import threading

    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise TimeoutError(f"no answer within {seconds} s")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_a_request_that_fails_to_start_fails_alone(smol) -> None:  # noqa: ANN001
    """A request whose start raises (a seed torch can't take, validation bypassed) gets that
    error; the request decoding beside it finishes untouched; neither hangs."""
    prompts = _prompts(smol)
    good = make_params(smol.tokenizer, max_new_tokens=12, temperature=0)
    bad = make_params(smol.tokenizer, max_new_tokens=4, temperature=0.8, seed=0)
    bad.seed = 2**64  # past validation: what a caller skipping SamplingParams.validate sends
    bad.validate = lambda: None  # type: ignore[method-assign]
    b = Batcher(smol.model, smol.tokenizer)
    try:
        h0 = b.submit(prompts[0], good)
        it = iter(h0)
        _within(lambda: next(it), 60)  # decoding
        hb = b.submit(prompts[1], bad)
        with pytest.raises(Exception, match="[Oo]verflow"):
            _within(hb.text, 60)
        _within(lambda: [None for _ in it], 60)
        after = _within(lambda: b.submit(prompts[2], good).text(), 60)  # still serving
    finally:
        b.close()
    assert h0.result is not None and h0.result.token_ids == _alone(smol, prompts[0], good).token_ids
    assert after.finish_reason in ("length", "stop")


def test_a_row_that_fails_mid_decode_fails_alone(smol) -> None:  # noqa: ANN001
    """An error on one row mid-decode (here its stop-token check raises at its third token)
    ends that row with the error; the other row of the same batch decodes to its end."""
    prompts = _prompts(smol)
    good = make_params(smol.tokenizer, max_new_tokens=10, temperature=0)
    bad = make_params(smol.tokenizer, max_new_tokens=10, temperature=0)

    class Boom(list):
        calls = 0

        def __contains__(self, _: object) -> bool:
            self.calls += 1
            if self.calls >= 3:
                raise RuntimeError("boom")
            return False

    b = Batcher(smol.model, smol.tokenizer)
    try:
        h0 = b.submit(prompts[0], good)
        it = iter(h0)
        _within(lambda: next(it), 60)
        bad.stop_token_ids = Boom()
        hb = b.submit(prompts[1], bad)
        with pytest.raises(RuntimeError, match="boom"):
            _within(hb.text, 60)
        _within(lambda: [None for _ in it], 60)
    finally:
        b.close()
    assert h0.result is not None and h0.result.token_ids == _alone(smol, prompts[0], good).token_ids


def test_out_of_range_seed_is_refused_naming_the_field() -> None:
    from llmlab.generate.sampling import SamplingParams

    for s in (2**64, -(2**63) - 1):
        with pytest.raises(ValueError, match="^seed must be in"):
            SamplingParams(seed=s).validate()
    SamplingParams(seed=2**64 - 1).validate()
    SamplingParams(seed=-(2**63)).validate()
