"""Grammar-constrained decoding (llmlab.generate.constrain) on the real SmolLM2. Outside
references: `jsonschema.validate` on every JSON output, `re.fullmatch` for regexes, and
llguidance's own per-token mask and matcher for our masks. That the model does not follow a
schema unconstrained is shown over HTTP (tests/server/test_structured_api.py)."""

from __future__ import annotations

import copy
import json
import re

import jsonschema
import pytest
import torch

from llmlab.generate import constrain as C
from llmlab.generate.batcher import Batcher
from llmlab.generate.chat import chat_ids
from llmlab.generate.engine import complete, make_params
from llmlab.generate.fast import pick_decoder

SCHEMAS = {
    "person": {  # nested object, required fields, bounded integer, enum
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
            "address": {"type": "object",
                        "properties": {"city": {"type": "string", "maxLength": 16},
                                       "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                        "required": ["city", "zip"], "additionalProperties": False},
        },
        "required": ["name", "age", "address"], "additionalProperties": False,
    },
    "pets": {  # an array with minItems, of enums
        "type": "object",
        "properties": {"pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]},
                                "minItems": 2, "maxItems": 4},
                       "count": {"type": "integer", "minimum": 2, "maximum": 4}},
        "required": ["pets", "count"], "additionalProperties": False,
    },
    "verdict": {  # booleans and numbers with bounds
        "type": "object",
        "properties": {"ok": {"type": "boolean"},
                       "score": {"type": "number", "minimum": 0, "maximum": 1},
                       "level": {"enum": ["low", "mid", "high"]}},
        "required": ["ok", "score", "level"], "additionalProperties": False,
    },
}
ASK = "Describe a person as JSON."


@pytest.fixture(scope="module")
def smol():  # noqa: ANN201
    import llmlab

    return llmlab.load("smollm2-135m-instruct")


def _ids(smol, q: str = ASK) -> list[int]:  # noqa: ANN001
    return chat_ids(smol, [{"role": "user", "content": q}])


def test_every_schema_output_validates_greedy_and_sampled(smol) -> None:  # noqa: ANN001
    """Six requests (3 schemas x greedy / temperature 1 with a seed) in one continuous batch."""
    b = Batcher(smol.model, smol.tokenizer)
    try:
        hs = [(name, b.submit(_ids(smol), make_params(
            smol.tokenizer, max_new_tokens=64, temperature=t, seed=7,
            constraint=C.json_schema(s))))
              for name, s in SCHEMAS.items() for t in (0.0, 1.0)]
        for name, h in hs:
            h.text()
            assert h.result.finish_reason == "stop", (name, h.result.text)
            jsonschema.validate(json.loads(h.result.text), SCHEMAS[name])
    finally:
        b.close()


def test_regex_and_choice(smol) -> None:  # noqa: ANN001
    pattern = r"[0-9]{3}-[a-z]{2,5}"
    ids = [_ids(smol, "Give a code."), _ids(smol, "What is the capital of France?")]
    p = make_params(smol.tokenizer, max_new_tokens=12, temperature=1.0, seed=1,
                    constraint=C.regex(pattern))
    for o in complete(smol.model, smol.tokenizer, ids, p):
        assert re.fullmatch(pattern, o.text) and o.finish_reason == "stop", o.text
    opts = ["Paris", "London", 'a "quoted" \\ one']
    p = make_params(smol.tokenizer, max_new_tokens=12, temperature=1.0, seed=2,
                    constraint=C.choice(opts))
    for o in complete(smol.model, smol.tokenizer, ids, p):
        assert o.text in opts and o.finish_reason == "stop"


def test_masks_agree_with_llguidance_token_by_token(smol) -> None:  # noqa: ANN001
    """Along a valid output, each step's mask is llguidance's own per-token mask
    (`compute_logit_bias`, one byte per token: no bit packing), with its end marker replaced
    by our stop token; and each allowed token is one its matcher accepts."""
    c = C.json_schema(SCHEMAS["verdict"]).bind(smol.tokenizer)
    text = '{"ok": true, "score": 0.5, "level": "mid"}'
    toks = smol.tokenizer.encode(text)
    g = C.Guide([c], [2], smol.cfg.vocab_size)
    ref = C.compiled(c, smol.cfg.vocab_size)
    for t in [*toks, None]:
        allowed = g.allowed()[0]
        bias = torch.frombuffer(bytearray(ref.compute_logit_bias()), dtype=torch.uint8)
        want = bias[: smol.cfg.vocab_size] > 0
        want[smol.tokenizer.eos_id] = False  # llguidance's EOS -> our stop tokens
        want[2] = ref.is_accepting()
        assert torch.equal(allowed, want), t
        for v in allowed.nonzero().flatten().tolist()[:50]:
            assert v == 2 or ref.deep_copy().try_consume_tokens([v]) == 1
        if t is None:
            assert allowed.nonzero().flatten().tolist() == [2]  # complete: the stop, forced
            break
        assert allowed[t]
        g.advance([t])
        assert ref.consume_token(t)


def test_mixed_batch_rows_get_what_they_get_alone(smol) -> None:  # noqa: ANN001
    """A constrained and a free request share a continuous batch; greedy, each gets its
    tokens from the one-request engine."""
    con = make_params(smol.tokenizer, max_new_tokens=32, temperature=0,
                      constraint=C.json_schema(SCHEMAS["verdict"]))
    free = make_params(smol.tokenizer, max_new_tokens=16, temperature=0)
    q1, q2 = _ids(smol, "Is the sky blue? Answer as JSON."), _ids(smol, "Name a colour.")
    alone = [complete(smol.model, smol.tokenizer, [q], p)[0] for q, p in ((q1, con), (q2, free))]
    b = Batcher(smol.model, smol.tokenizer)
    try:
        hs = [b.submit(q1, con), b.submit(q2, free)]
        got = [(h.text(), h.result)[1] for h in hs]
    finally:
        b.close()
    for a, g in zip(alone, got, strict=True):
        assert g.token_ids == a.token_ids
    jsonschema.validate(json.loads(got[0].text), SCHEMAS["verdict"])


def test_lean_cpu_decoder_honours_the_mask(smol) -> None:  # noqa: ANN001
    from llmlab.model.quant import quantize_int8_

    q = quantize_int8_(copy.deepcopy(smol.model))
    p = make_params(smol.tokenizer, max_new_tokens=40, temperature=1.0, seed=3,
                    constraint=C.json_schema(SCHEMAS["verdict"]))
    ids = _ids(smol, "Is the sky blue? Answer as JSON.")
    assert type(pick_decoder(q, [ids], p)).__name__ == "LeanDecoder"
    out = complete(q, smol.tokenizer, [ids], p)[0]
    jsonschema.validate(json.loads(out.text), SCHEMAS["verdict"])


def test_bad_grammars_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"^schema: .*strin"):
        C.json_schema({"type": "object", "properties": {"a": {"type": "strin"}}})
    with pytest.raises(ValueError, match=r"^schema: must be a JSON object"):
        C.json_schema([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"(?s)^regex: .*unclosed group"):
        C.regex("a(b")
    with pytest.raises(ValueError, match=r"^choice: "):
        C.choice([])
    with pytest.raises(ValueError, match=r"^constraint: needs a stop token"):
        make_params(None, constraint=C.json_object()).validate()
