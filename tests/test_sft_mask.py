"""The SFT masking page's library (llmlab.train.sft_view): the tokens it marks trained are the
labels `llmlab sft` trains on, and they equal transformers' assistant-token mask; its packing
view is `pack`'s rows, positions restart per example, and its attention mask is block-diagonal
causal."""

from __future__ import annotations

import numpy as np
import pytest
from sft_mask_refs import hf_assistant_mask

from llmlab.tokenizer import load_tokenizer
from llmlab.tokenizer.chat_template import TEMPLATES
from llmlab.train import sft_view
from llmlab.train.sft import IGNORE, encode_chat, pack, tokenize_examples

CONVERSATIONS = {
    "one-turn": [{"role": "user", "content": "What is the capital of France?"},
                 {"role": "assistant", "content": "Paris."}],
    "multi-turn": [{"role": "user", "content": "Hi! Can you add 2+2?"},
                   {"role": "assistant", "content": "Sure: 4."},
                   {"role": "user", "content": "  And 10*3?\n"},
                   {"role": "assistant", "content": "30 🤖\n\nAnything else?"},
                   {"role": "user", "content": "No, thanks."},
                   {"role": "assistant", "content": "You're welcome!\n"}],
    "ends-on-user": [{"role": "user", "content": "Name a colour."},
                     {"role": "assistant", "content": "Blue"},
                     {"role": "user", "content": "Another?"}],
}
SYSTEM = "You are a terse assistant. Answer in <= 5 words."


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("smollm2")


@pytest.mark.parametrize("system", [None, "message", "argument"])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_trained_tokens_equal_transformers_assistant_mask(tok, name, system):
    msgs = CONVERSATIONS[name]
    hf_msgs = msgs if system is None else [{"role": "system", "content": SYSTEM}, *msgs]
    want_ids, want_mask = hf_assistant_mask(hf_msgs)
    assert sum(want_mask) > 0
    # The system prompt either as a message or as `llmlab sft --system` (the argument).
    ours, arg = (hf_msgs, None) if system != "argument" else (msgs, SYSTEM)
    ids, labels = encode_chat(tok, TEMPLATES["chatml"], ours, arg)
    assert ids == want_ids
    assert [int(lab != IGNORE) for lab in labels] == want_mask
    view = sft_view.token_view(tok, TEMPLATES["chatml"], ours, arg)
    assert [t["id"] for t in view["tokens"]] == want_ids
    assert [int(t["trained"]) for t in view["tokens"]] == want_mask
    assert [t["label"] for t in view["tokens"]] == labels
    assert view["n_trained"] == sum(want_mask)
    # Each token's turn: the trained ones are all in assistant turns, the turns in order.
    assert all(t["role"] == "assistant" for t in view["tokens"] if t["trained"])
    turns = [t["turn"] for t in view["tokens"]]
    assert turns == sorted(turns) and turns[-1] == len(hf_msgs) - 1


@pytest.mark.parametrize("template", ["chatml", "llama3", "zephyr"])
@pytest.mark.parametrize(("seq_len", "n"), [(256, 4), (192, 2), (128, 0), (1024, 8)])
def test_packing_view_is_packs_rows(tok, template, seq_len, n):
    t, msgs = TEMPLATES[template], CONVERSATIONS["multi-turn"][:2]
    out = sft_view.pack_view(tok, t, msgs, SYSTEM, seq_len, n)
    examples = [{"messages": msgs}] + [
        {"messages": [{"role": r, "content": c} for r, c in ex]}
        for ex in sft_view.bundled_examples()[:n]]
    shifted = tokenize_examples(tok, t, examples, seq_len, SYSTEM)
    rows = pack(shifted, seq_len, tok.eos_id)
    assert out["n_examples"] == n + 1 and len(out["rows"]) == rows["input_ids"].shape[0]
    for r, row in enumerate(out["rows"]):
        cells = row["tokens"]
        for key, col in (("id", "input_ids"), ("label", "labels"), ("position", "positions"),
                         ("doc", "doc_ids")):
            assert [c[key] for c in cells] == rows[col][r].tolist(), key
        # Positions restart at 0 exactly where a new document starts; padding is doc -1.
        docs = [c["doc"] for c in cells]
        for i, c in enumerate(cells):
            if c["doc"] >= 0:
                assert (c["position"] == 0) == (i == 0 or docs[i - 1] != c["doc"])
        assert row["used"] == sum(d >= 0 for d in docs)
    # Every example's tokens, gathered by the view's example index, are its shifted input.
    for k, (x, y) in enumerate(shifted):
        got = [c for row in out["rows"] for c in row["tokens"] if c["example"] == k]
        assert [c["id"] for c in got] == x and [c["label"] for c in got] == y
    # The user's example in the packed row is the token view shifted by one (predict t+1).
    view = sft_view.token_view(tok, t, msgs, SYSTEM)
    mine = [c for c in out["rows"][0]["tokens"] if c["example"] == 0]
    assert [c["label"] for c in mine] == [v["label"] for v in view["tokens"]][1:len(mine) + 1]
    # The mask: query q sees key k iff k <= q and both are in the same document.
    d = np.array(out["mask_docs"])
    m = len(d)
    assert m == min(seq_len, sft_view.MASK_MAX)
    want = (d[:, None] == d[None, :]) & np.tri(m, dtype=bool)
    assert np.array_equal(np.array(out["mask"], dtype=bool), want)


def test_a_long_example_is_cut_with_the_training_warning(tok):
    msgs = [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "ok " * 40}]
    out = sft_view.pack_view(tok, TEMPLATES["chatml"], msgs, None, 96, 1)
    assert out["cut"] and "longer than seq_len=96" in out["cut"][0]
    assert out["rows"][0]["used"] == 96


@pytest.mark.parametrize(("call", "field"), [
    (lambda: sft_view.check_messages([]), "messages"),
    (lambda: sft_view.check_messages([{"role": "user", "content": "hi"}]), "messages"),
    (lambda: sft_view.check_messages([{"role": "bot", "content": "x"}]), "messages[0].role"),
    (lambda: sft_view.check_messages([{"role": "user"}]), "messages[0].content"),
    (lambda: sft_view.get_template("vicuna"), "template"),
    (lambda: sft_view.get_template("/etc/passwd"), "template"),
])
def test_bad_input_names_the_field(call, field):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value).startswith(field + ":")


def test_no_trainable_token_within_seq_len_names_seq_len(tok):
    msgs = [{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(ValueError, match=r"^seq_len: .*no trainable"):
        sft_view.pack_view(tok, TEMPLATES["chatml"], msgs, None, 32, 0)
    with pytest.raises(ValueError, match=r"^pack_examples: expected 0\.\.8"):
        sft_view.pack_view(tok, TEMPLATES["chatml"], msgs, None, 32, 9)
