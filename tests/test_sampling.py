"""Our logits processing against transformers' own processors, and the text streamer."""

from __future__ import annotations

import pytest
import torch

from llmlab.generate.reply import TextStream
from llmlab.generate.sampling import SamplingParams, process_logits


def _hf(params: SamplingParams, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k:
        procs.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        procs.append(TopPLogitsWarper(params.top_p))
    if params.min_p > 0:
        procs.append(MinPLogitsWarper(params.min_p))
    return procs(input_ids, logits.clone())


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=0.7),
        dict(top_k=7),
        dict(top_p=0.9),
        dict(top_p=0.3, temperature=1.3),
        dict(min_p=0.05),
        dict(repetition_penalty=1.3),
        dict(repetition_penalty=1.2, temperature=0.8, top_k=40, top_p=0.95, min_p=0.02),
    ],
)
def test_processing_matches_transformers(kw):
    torch.manual_seed(0)
    v = 500
    logits = torch.randn(3, v) * 3
    input_ids = torch.randint(0, v, (3, 12))
    params = SamplingParams(**kw)
    seen = torch.zeros(3, v, dtype=torch.bool)
    seen.scatter_(1, input_ids, True)
    ours = process_logits(logits, params, seen)
    theirs = _hf(params, input_ids, logits)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    finite = ~torch.isinf(ours)
    assert torch.allclose(ours[finite], theirs[finite], atol=1e-5)


@pytest.mark.parametrize(
    "kw,name",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(min_p=2.0), "min_p"),
    ],
)
def test_out_of_range_parameters_are_named(kw, name):
    with pytest.raises(ValueError, match=name):
        SamplingParams(**kw).validate()


class _ByteTok:
    def decode_bytes(self, ids):
        return bytes(ids)


def test_text_stream_waits_for_whole_utf8_characters():
    s = TextStream(_ByteTok(), [])
    data = "héllo 🎉".encode()
    out = "".join(s.feed(b) for b in data) + s.flush()
    assert out == "héllo 🎉"


def test_text_stream_cuts_stop_strings_and_holds_back_prefixes():
    s = TextStream(_ByteTok(), ["<|im_end|>"])
    pieces = [s.feed(b) for b in b"Paris.<|im_"]
    assert "".join(pieces) == "Paris."  # "<|im_" is held back: it may become the stop
    for b in b"end|> more":
        s.feed(b)
    assert s.stopped and s.flush() == "" and s.text == "Paris."
    s2 = TextStream(_ByteTok(), ["<|im_end|>"])
    out = "".join(s2.feed(b) for b in b"a <|im_x") + s2.flush()
    assert out == "a <|im_x"  # a prefix that never completes is released
