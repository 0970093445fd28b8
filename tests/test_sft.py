"""SFT data, masking and packing, against transformers' chat template and unpacked runs."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from peft_common import tiny_model

from llmlab.train.sft import IGNORE, encode_chat, pack, sft_loss, tokenize_examples
from llmlab.train.sft_data import exact_match, load_file

CONVS = [
    [{"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Capital of France?"},
     {"role": "assistant", "content": "Paris\n\nIt's Paris."}],
]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    import llmlab

    lm = llmlab.load("smollm2-135m-instruct")
    d = tmp_path_factory.mktemp("tok")
    lm.tokenizer.save_hf(d)
    return lm, transformers.AutoTokenizer.from_pretrained(d)


@pytest.mark.parametrize("msgs", CONVS)
def test_labels_match_hf_chat_template_and_assistant_spans(smol, msgs):
    from llmlab.generate.chat import template_for

    lm, ht = smol
    ids, labels = encode_chat(lm.tokenizer, template_for(lm), msgs)
    text = ht.apply_chat_template(msgs, tokenize=False)
    enc = ht(text, add_special_tokens=False, return_offsets_mapping=True)
    assert ids == enc["input_ids"]
    # Assistant spans in HF's rendering: content through <|im_end|> of each assistant turn.
    spans, at, head = [], 0, "<|im_start|>assistant\n"
    while (s := text.find(head, at)) >= 0:
        start = s + len(head)
        end = text.index("<|im_end|>", start) + len("<|im_end|>")
        spans.append((start, end))
        at = end
    want = [i if any(a <= o0 and o1 <= b for a, b in spans) else IGNORE
            for i, (o0, o1) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)]
    assert labels == want


def test_packing_equals_each_document_alone():
    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, 96, (n,), generator=g).tolist() for n in (7, 12, 5)]
    exs = [(d, d) for d in docs]
    rows = pack(exs, 32, pad_id=0)
    assert rows["input_ids"].shape == (1, 32)
    with torch.no_grad():
        packed = model(rows["input_ids"], positions=rows["positions"],
                       doc_ids=rows["doc_ids"]).logits[0]
        at = 0
        for d in docs:
            alone = model(torch.tensor([d])).logits[0]
            assert torch.allclose(packed[at:at + len(d)], alone, atol=1e-5)
            at += len(d)


def test_loss_only_on_assistant_tokens():
    model = tiny_model()
    x = [1, 2, 3, 4, 5, 6]
    y = [IGNORE, IGNORE, IGNORE, 7, 8, IGNORE]
    rows = pack([(x, y)], 8, pad_id=0)
    loss, m = sft_loss(model, rows)
    logits = model(torch.tensor([x])).logits[0]
    ref = torch.nn.functional.cross_entropy(logits[3:5], torch.tensor([7, 8]))
    assert m["tokens"] == 2 and torch.allclose(loss, ref, atol=1e-5)


def test_no_trainable_token_is_an_error(smol):
    from llmlab.generate.chat import template_for

    lm, _ = smol
    long = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(ValueError, match="no trainable"):
        tokenize_examples(lm.tokenizer, template_for(lm), [{"messages": long}], 64)


def test_cut_examples_are_counted_in_a_warning(smol):
    from llmlab.generate.chat import template_for

    lm, _ = smol
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    long = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 80}]
    exs = [{"messages": m} for m in (short, long, short, long)]
    n = len(encode_chat(lm.tokenizer, template_for(lm), long)[0]) - 1
    with pytest.warns(UserWarning, match=rf"2 of 4 examples .* seq_len=64 .*longest: {n}\)"):
        rows = tokenize_examples(lm.tokenizer, template_for(lm), exs, 64)
    assert [len(x) for x, _ in rows][1::2] == [64, 64]


def test_bad_rows_name_file_line_and_field(tmp_path):
    f = tmp_path / "d.jsonl"
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    f.write_text(json.dumps(good) + "\n" + json.dumps(
        {"messages": [{"role": "user", "content": 3}]}) + "\n")
    with pytest.raises(ValueError, match=r"d.jsonl:2: field messages\[0\]: field 'content'"):
        load_file(f, "chat")
    f.write_text(json.dumps(good) + "\n\n{oops\n")
    with pytest.raises(ValueError, match=r"d.jsonl:3: invalid JSON"):
        load_file(f)
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n"
                 + json.dumps({"instruction": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"a.jsonl:2: field 'output' must be a string, got miss"):
        load_file(a, "alpaca")
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}]}) + "\n")
    with pytest.raises(ValueError, match="no assistant turn"):
        load_file(f, "chat")


def test_alpaca_and_exact_match(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps([{"instruction": "Add", "input": "2 2", "output": "4"}]))
    assert load_file(a)[0] == [{"role": "user", "content": "Add\n\n2 2"},
                               {"role": "assistant", "content": "4"}]
    assert exact_match("The Beatles.", ["Beatles"]) and not exact_match("Stones", ["Beatles"])


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_loss_on_selected_logits_equals_full_logits_loss_and_grads(method):
    # sft_loss runs the LM head at trainable positions only; same loss and gradients as
    # cross-entropy over the full (B, T, vocab) logits with the other labels ignored.
    from llmlab.peft.model import get_peft_model

    torch.manual_seed(0)
    opts = {"r": 4, "target_modules": "all-linear"} if method == "lora" else {
        "num_virtual_tokens": 3}
    pm = get_peft_model(tiny_model(), method, **opts)
    for p in pm.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    rows = pack([([1, 2, 3, 4, 5, 6], [IGNORE, IGNORE, 9, 7, 8, IGNORE]),
                 ([7, 3, 2], [IGNORE, 4, 5])], 8, pad_id=0, packing=method == "lora")
    loss, m = sft_loss(pm, rows)
    loss.backward()
    ours = {k: p.grad.clone() for k, p in pm.named_parameters() if p.requires_grad}
    pm.zero_grad()
    kw = {"positions": rows["positions"], "doc_ids": rows["doc_ids"]} if method == "lora" else {}
    logits = pm(rows["input_ids"], **kw).logits
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), rows["labels"].flatten(),
                                            ignore_index=IGNORE)
    ref.backward()
    assert m["tokens"] == 5 and torch.allclose(loss, ref, atol=1e-6)
    for k, p in pm.named_parameters():
        if p.requires_grad:
            assert torch.allclose(ours[k], p.grad, atol=1e-6), k


def test_a_leading_bom_is_read_as_utf8(tmp_path):
    """Files saved by Windows editors start with a UTF-8 BOM: every reader of user text drops
    it, where json.loads alone fails and a plain read would keep U+FEFF in the text."""
    from llmlab.rag.ingest import read_file
    from llmlab.train.data import iter_documents

    bom = "\ufeff"
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    f = tmp_path / "d.jsonl"
    f.write_text(bom + json.dumps(good) + "\n", encoding="utf-8")
    assert load_file(f, "chat")[0] == good["messages"]
    t = tmp_path / "t.txt"
    t.write_text(bom + "In the beginning", encoding="utf-8")
    j = tmp_path / "t.jsonl"
    j.write_text(bom + json.dumps({"text": "In the beginning"}) + "\n", encoding="utf-8")
    assert list(iter_documents([str(t), str(j)])) == ["In the beginning"] * 2
    assert read_file(t, "t.txt")[0].text == "In the beginning"
