"""Configurable chat templates: presets and JSON files render in transformers'
`apply_chat_template` exactly as in ours, read back from a model's Jinja, and SFT's labels
cover each assistant turn through its stop marker."""

from __future__ import annotations

import json
import types

import pytest
import tokenizers
import transformers

from llmlab.generate.chat import template_for
from llmlab.tokenizer.chat_template import TEMPLATES, ChatTemplate, load_template
from llmlab.train.sft import IGNORE, encode_chat

MSGS = [{"role": "user", "content": 'Hi {there} #} "x" \\'},
        {"role": "assistant", "content": "Yo\n"}, {"role": "user", "content": "again"}]
ODD = ChatTemplate(turn_start='[{role}] #} {x} "q" \\ {role}:\n', turn_end="<END>\n\n",
                   generation_prompt="[assistant]:\n", default_system="Be {brief} #} ok",
                   stop=["<END>"])
CASES = {**TEMPLATES, "odd": ODD, "chatml-with-system": ChatTemplate(default_system="Be X")}


@pytest.mark.parametrize("name", list(CASES))
def test_jinja_renders_in_transformers_as_in_ours_and_reads_back(name):
    t = CASES[name].validate()
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(tokenizers.models.BPE()))
    hf.chat_template = t.to_jinja()
    for msgs in (MSGS, [{"role": "system", "content": "S"}, *MSGS]):
        for gen in (True, False):
            want = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            assert t.render(msgs, add_generation_prompt=gen) == want
    lm = types.SimpleNamespace(cfg=types.SimpleNamespace(extra={"chat_template": t.to_jinja()}))
    assert template_for(lm) == t


@pytest.mark.parametrize("name", ["llama3", "zephyr"])
def test_sft_labels_are_each_assistant_turn_through_its_stop_marker(name):
    """SmolLM2's vocabulary lacks these markers: they are plain text, and still each label
    run decodes to the reply plus the stop marker, and nothing else is labelled."""
    from llmlab.tokenizer.loaders import load_tokenizer

    tok, t = load_tokenizer("smollm2"), TEMPLATES[name]
    msgs = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "6, I think."}]
    ids, labels = encode_chat(tok, t, msgs)
    assert tok.decode(ids) == t.render(msgs, add_generation_prompt=False)
    runs, cur = [], []
    for i, lab in zip(ids, labels, strict=True):
        if lab == IGNORE:
            if cur:
                runs.append(cur)
            cur = []
        else:
            assert lab == i
            cur.append(i)
    runs += [cur] if cur else []
    assert [tok.decode(r) for r in runs] == ["4" + t.stop[0], "6, I think." + t.stop[0]]


@pytest.mark.parametrize("fields,expect", [
    ({"turn_start": "<{who}>"}, "field 'turn_start' must contain {role}"),
    ({"turn_end": "\n", "stop": ["</s>"]}, "field 'turn_end' ('\\\\n') must begin with stop"),
    ({"stop": []}, "field 'stop' must be a non-empty list"),
    ({"turns": "x"}, "expected an object with fields turn_start"),
])
def test_a_bad_template_file_names_the_file_and_field(tmp_path, fields, expect):
    f = tmp_path / "t.json"
    f.write_text(json.dumps(fields))
    with pytest.raises(ValueError, match=r"t\.json: " + expect.replace("(", r"\(")
                       .replace(")", r"\)").replace("[", r"\[")):
        load_template(str(f))
    with pytest.raises(ValueError, match="not a preset \\(chatml, llama3, zephyr\\)"):
        load_template("vicuna")
