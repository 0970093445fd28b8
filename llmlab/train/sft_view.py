"""What SFT trains on, token by token, for the playground's SFT masking page.

Every label here comes from the training code itself (`encode_chat`, `tokenize_examples`,
`pack` in llmlab/train/sft.py) and the attention mask from the model's own `doc_mask`, so the
page shows exactly what `llmlab sft` computes; this module only lays it out per token (which
turn a token came from, where packed examples start) for drawing.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

from llmlab.model.transformer import doc_mask
from llmlab.tokenizer.chat_template import TEMPLATES, ChatTemplate
from llmlab.train.sft import IGNORE, encode_chat, pack, tokenize_examples
from llmlab.train.sft_data import ROLES, load_examples

MASK_MAX = 128  # the attention mask drawn covers at most this many positions of the row
BUNDLED_MAX = 8


def visible(piece: str) -> str:
    """A token's text with whitespace drawn: space ·, newline ↵, tab →."""
    return piece.replace(" ", "·").replace("\n", "↵").replace("\t", "→")


def get_template(name: str) -> ChatTemplate:
    """A preset by name only: the page may not name a file (load_template would read one)."""
    if name not in TEMPLATES:
        raise ValueError(f"template: unknown template {name!r}; expected one of "
                         f"{', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def check_messages(messages: Any) -> list[dict[str, str]]:
    """The conversation as {role, content} dicts, or ValueError naming the bad field."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: expected a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}].content: expected a string")
        if m.get("role") not in ROLES:
            raise ValueError(f"messages[{i}].role: {m.get('role')!r} is not one of "
                             f"{', '.join(ROLES)}")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError("messages: no assistant turn, so nothing would be trained")
    return out


def _turn_spans(tok: Any, template: ChatTemplate, messages: list[dict[str, str]],
                system: str | None) -> list[tuple[int, str]]:
    """(end byte, role) of each turn of the rendered conversation, in order."""
    spans, end = [], 0
    for m in template._messages(messages, system):
        end += len((template.start(m["role"]) + m["content"] + template.turn_end).encode())
        spans.append((end, m["role"]))
    return spans


def token_view(tok: Any, template: ChatTemplate, messages: list[dict[str, str]],
               system: str | None = None) -> dict[str, Any]:
    """Each token of the conversation as `llmlab sft` encodes it: id, piece, label (the id
    where trained, else -100, from `encode_chat`), and the turn (index, role) it starts in."""
    ids, labels = encode_chat(tok, template, messages, system)
    spans = _turn_spans(tok, template, messages, system)
    pieces = tok.pieces(ids)
    tokens, at, turn = [], 0, 0
    for i, lab in zip(ids, labels, strict=True):
        while turn < len(spans) - 1 and at >= spans[turn][0]:
            turn += 1
        tokens.append({"id": i, "piece": visible(pieces[len(tokens)]), "label": lab,
                       "trained": lab != IGNORE, "turn": turn, "role": spans[turn][1]})
        at += len(tok.token_bytes(i))
    n = sum(t["trained"] for t in tokens)
    return {"tokens": tokens, "n_tokens": len(tokens), "n_trained": n,
            "text": template.render(messages, system, add_generation_prompt=False)}


@functools.cache
def bundled_examples(n: int = BUNDLED_MAX) -> tuple[tuple[tuple[str, str], ...], ...]:
    """The first `n` examples of `llmlab sft --data trivia` (train split), as hashable turns."""
    return tuple(tuple((m["role"], m["content"]) for m in ex["messages"])
                 for ex in load_examples("trivia", split="train")[:n])


def pack_view(tok: Any, template: ChatTemplate, messages: list[dict[str, str]],
              system: str | None, seq_len: int, n_bundled: int) -> dict[str, Any]:
    """The user's conversation then `n_bundled` trivia examples, shifted and truncated by
    `tokenize_examples` and packed by `pack` as `llmlab sft` does: per row and position the
    input token, its label (the next token where trained), position id and doc id, plus the
    block-diagonal causal attention mask of the first row (its first MASK_MAX positions)."""
    if not 0 <= n_bundled <= BUNDLED_MAX:
        raise ValueError(f"pack_examples: expected 0..{BUNDLED_MAX}, got {n_bundled}")
    examples = [{"messages": messages, "where": "messages"}] + [
        {"messages": [{"role": r, "content": c} for r, c in ex], "where": f"trivia example {k}"}
        for k, ex in enumerate(bundled_examples()[:n_bundled])]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            shifted = tokenize_examples(tok, template, examples, seq_len, system)
        except ValueError as e:
            raise ValueError(f"seq_len: {e}") from None
    pad = tok.eos_id if tok.eos_id is not None else 0
    rows = pack(shifted, seq_len, pad)
    out_rows, example = [], -1
    for r in range(rows["input_ids"].shape[0]):
        ids, labels = rows["input_ids"][r].tolist(), rows["labels"][r].tolist()
        pos, docs = rows["positions"][r].tolist(), rows["doc_ids"][r].tolist()
        first = example + 1  # pack keeps the order: row r's doc 0 is the next example
        pieces = tok.pieces(ids)
        cells = [{"id": i, "piece": visible(p), "label": lab, "trained": lab != IGNORE,
                  "position": q, "doc": d, "example": first + d if d >= 0 else -1}
                 for i, p, lab, q, d in zip(ids, pieces, labels, pos, docs, strict=True)]
        example = max(example, *(c["example"] for c in cells))
        out_rows.append({"tokens": cells, "used": sum(d >= 0 for d in docs)})
    m = min(seq_len, MASK_MAX)
    mask = doc_mask(rows["doc_ids"][:1, :m], causal=True)[0, 0]
    return {"rows": out_rows, "seq_len": seq_len, "n_examples": len(examples),
            "cut": [str(w.message) for w in caught], "mask": mask.int().tolist(),
            "mask_docs": rows["doc_ids"][0, :m].tolist()}
