"""Supervised fine-tuning: chat rendering with assistant-only labels, packing, the loss, and
the glue to the shared Trainer (full fine-tuning or any llmlab.peft method).

Labels are -100 everywhere except assistant turns: each assistant turn's content and its
end-of-turn token (`<|im_end|>` in ChatML) are trained, so the model learns to answer and to
stop; the `<|im_start|>assistant\\n` header, system and user turns are context only. Text is
encoded piece by piece at those boundaries (each boundary sits next to a special token, where
a BPE tokenizer splits anyway), which gives the ids of encoding the whole conversation. One
exception: a reply that starts with whitespace, which whole-text BPE would merge with the
header's newline ("\\n " as one token). Split, the ids are those the model sees at inference,
where the reply is generated after the header's "\\n" token.

Packing concatenates examples into rows of `seq_len`; `doc_ids` gives attention a
block-diagonal causal mask and positions restart at 0 per example, so a packed row computes
exactly what each example computes alone (tested).
"""

from __future__ import annotations

import dataclasses
import json
import random
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import llmlab
from llmlab.generate.chat import set_template, template_for
from llmlab.generate.engine import complete, make_params
from llmlab.peft.accounting import adamw_memory
from llmlab.peft.model import get_peft_model
from llmlab.tokenizer.chat_template import ChatTemplate, load_template
from llmlab.train.config import SFTConfig, TrainConfig
from llmlab.train.distributed import init_distributed, shutdown
from llmlab.train.loop import Trainer
from llmlab.train.sft_data import load_examples
from llmlab.weights.io import atomic_write_bytes
from llmlab.weights.registry import save_checkpoint

IGNORE = -100


def encode_chat(tok: Any, template: ChatTemplate, messages: list[dict[str, str]],
                system: str | None = None) -> tuple[list[int], list[int]]:
    """(ids, labels) of a conversation; labels are the ids on assistant turns, else -100."""
    full = template.render(messages, system=system, add_generation_prompt=False)
    stop = template.stop[0] if template.stop else ""
    pieces: list[tuple[str, bool]] = []
    pos = 0
    msgs = list(messages)
    if system is not None:
        msgs = [m for m in msgs if m["role"] != "system"]
    for m in msgs:
        if m["role"] != "assistant":
            continue
        head = template.start("assistant")
        body = m["content"] + (stop if template.turn_end.startswith(stop) else "")
        start = full.index(head + m["content"], pos) + len(head)
        pieces += [(full[pos:start], False), (body, True)]
        pos = start + len(body)
    pieces.append((full[pos:], False))
    ids: list[int] = []
    labels: list[int] = []
    for text, train in pieces:
        if not text:
            continue
        t = tok.encode(text, allowed_special="all")
        ids += t
        labels += t if train else [IGNORE] * len(t)
    return ids, labels


def tokenize_examples(tok: Any, template: ChatTemplate, examples: list[dict[str, Any]],
                      seq_len: int, system: str | None = None) -> list[tuple[list[int], list[int]]]:
    """Encode and shift: input ids[:-1], labels[1:] (predict token t+1 at t); truncate, with
    a warning that counts the examples cut (their replies lose their ends)."""
    out, cut, longest = [], 0, 0
    for i, ex in enumerate(examples):
        ids, labels = encode_chat(tok, template, ex["messages"], system)
        if len(ids) > seq_len + 1:
            cut, longest = cut + 1, max(longest, len(ids) - 1)
        ids, labels = ids[: seq_len + 1], labels[: seq_len + 1]
        x, y = ids[:-1], labels[1:]
        if not any(t != IGNORE for t in y):
            where = ex.get("where", f"example {i}")
            raise ValueError(f"{where}: no trainable (assistant) token within seq_len={seq_len}"
                             " tokens; raise --seq-len or shorten the prompt")
        out.append((x, y))
    if cut:
        warnings.warn(f"{cut} of {len(examples)} examples are longer than seq_len={seq_len} "
                      f"tokens (the longest: {longest}) and were cut at the end; raise "
                      "--seq-len to train on them whole", stacklevel=2)
    return out


def pack(examples: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int,
         packing: bool = True) -> dict[str, torch.Tensor]:
    """Rows of seq_len: input_ids, labels, positions (restarting per example), doc_ids
    (-1 on padding). Greedy first-fit in the given order."""
    rows: list[list[tuple[list[int], list[int]]]] = []
    used: list[int] = []
    for x, y in examples:
        if packing and rows and used[-1] + len(x) <= seq_len:
            rows[-1].append((x, y))
            used[-1] += len(x)
        else:
            rows.append([(x, y)])
            used.append(len(x))
    n = len(rows)
    ids = torch.full((n, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((n, seq_len), IGNORE, dtype=torch.long)
    positions = torch.zeros((n, seq_len), dtype=torch.long)
    docs = torch.full((n, seq_len), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for d, (x, y) in enumerate(row):
            k = len(x)
            ids[r, at:at + k] = torch.tensor(x)
            labels[r, at:at + k] = torch.tensor(y)
            positions[r, at:at + k] = torch.arange(k)
            docs[r, at:at + k] = d
            at += k
    return {"input_ids": ids, "labels": labels, "positions": positions, "doc_ids": docs}


class SFTBatches:
    """Packed rows served in a per-epoch permutation seeded by (seed, epoch); the state is one
    counter, so resume is exact. Micro-batch k of rank r is global batch k*world + r."""

    def __init__(self, rows: dict[str, torch.Tensor], batch_size: int, seed: int,
                 rank: int = 0, world: int = 1) -> None:
        self.rows, self.bs, self.seed, self.rank, self.world = rows, batch_size, seed, rank, world
        self.n = rows["input_ids"].shape[0]
        self.k = 0

    def _order(self, epoch: int) -> list[int]:
        perm = list(range(self.n))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(perm)
        return perm

    def next_batch(self) -> dict[str, torch.Tensor]:
        start = (self.k * self.world + self.rank) * self.bs
        self.k += 1
        idx = [self._order(j // self.n)[j % self.n] for j in range(start, start + self.bs)]
        return {k: v[idx] for k, v in self.rows.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.k = int(state["k"])


def sft_loss(model: nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Mean cross-entropy over trainable (assistant) tokens only: the others are -100.

    The model runs its LM head at the kept positions only: SFT trains a few per cent of the
    tokens of a packed row (about 6% on the trivia set), and the head (hidden x vocab) is the
    largest matmul of a small model, so this skips most of its forward and backward and the
    (B, T, vocab) logits. The loss is the same number as over all positions."""
    kw: dict[str, Any] = {}
    if "doc_ids" in batch and bool((batch["doc_ids"] > 0).any()):  # packed: reset attention
        kw = {"positions": batch["positions"], "doc_ids": batch["doc_ids"]}
    labels = batch["labels"]
    loss = model(batch["input_ids"], targets=labels, **kw).loss
    return loss, {"tokens": int((labels != IGNORE).sum())}


def held_out_prompts(examples: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """`n` held-out conversations chosen by `seed`: the turns before the last assistant reply
    (the prompt) and that reply (the reference answer)."""
    out = []
    for i in sorted(random.Random(seed).sample(range(len(examples)), min(n, len(examples)))):
        msgs = examples[i]["messages"]
        last = max(j for j, m in enumerate(msgs) if m["role"] == "assistant")
        out.append({"messages": msgs[:last], "reference": msgs[last]["content"]})
    return out


def answer_prompts(model: nn.Module, tok: Any, template: ChatTemplate,
                   prompts: list[dict[str, Any]], max_new_tokens: int,
                   system: str | None = None) -> list[dict[str, str]]:
    """The model's greedy reply to each held-out prompt, {"prompt", "answer", "reference"}.
    One prompt at a time, as Chat sends it: no left padding next to longer prompts, so the
    answers are the ones Chat gives at temperature 0."""
    params = make_params(tok, max_new_tokens=max_new_tokens, temperature=0.0,
                         stop=list(template.stop))
    out = []
    for p in prompts:
        ids = template.encode(tok, p["messages"], system)
        text = complete(model, tok, [ids], params, truncate=True)[0].text
        out.append({"prompt": p["messages"][-1]["content"], "answer": text.strip(),
                    "reference": p["reference"]})
    return out


def param_accounting(model: nn.Module) -> dict[str, Any]:
    """Trainable and total parameters as PEFT counts them, and the training memory the run
    holds besides activations (`peft.accounting.adamw_memory`), from the model itself."""
    params = list(model.parameters())  # shared (tied) weights once
    if hasattr(model, "parameter_counts"):  # a PeftModel: a 4-bit weight counts its elements
        trainable, total = model.parameter_counts()
    else:
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in params if not p.requires_grad)
    frozen += getattr(model, "quantized_bytes", 0)
    size = next((p.element_size() for p in params if p.requires_grad), 4)
    return {"trainable": trainable, "total_params": total,
            "trainable_pct": 100.0 * trainable / max(1, total),
            "memory": adamw_memory(frozen, trainable, total, size)}


def run_sft(scfg: SFTConfig, tcfg: TrainConfig, run_dir: str | Path) -> dict[str, Any]:
    tcfg.validate()
    custom = load_template(scfg.chat_template) if scfg.chat_template else None  # fail fast
    # Bad data fails before the model loads (seconds to minutes).
    train_ex = load_examples(scfg.data, scfg.format, "train")
    val_ex = load_examples(scfg.data, scfg.format, "test")
    run_dir = Path(run_dir)
    d = init_distributed(tcfg.device, tcfg.fsdp)
    try:
        if tcfg.threads:
            torch.set_num_threads(tcfg.threads)
        lm = llmlab.load(scfg.model)
        if custom is not None:  # the model's own from now on: checkpoints and exports carry it
            set_template(lm, custom)
        tok, template = lm.tokenizer, template_for(lm)
        if not val_ex and scfg.val_examples and len(train_ex) > 2 * scfg.val_examples:
            val_ex, train_ex = train_ex[-scfg.val_examples:], train_ex[:-scfg.val_examples]
        if scfg.max_examples:
            train_ex = train_ex[: scfg.max_examples]
        pad = tok.eos_id if tok.eos_id is not None else 0
        packing = scfg.packing and scfg.peft not in ("prompt", "prefix")
        random.Random(tcfg.seed).shuffle(train_ex)
        rows = pack(tokenize_examples(tok, template, train_ex, tcfg.seq_len, scfg.system),
                    tcfg.seq_len, pad, packing)
        evals: list[dict[str, torch.Tensor]] = []
        if val_ex:
            vrows = pack(tokenize_examples(tok, template, val_ex[: tcfg.eval_batches *
                                                                 tcfg.batch_size],
                                           tcfg.seq_len, scfg.system), tcfg.seq_len, pad, packing)
            evals = [{k: v[i:i + tcfg.batch_size] for k, v in vrows.items()}
                     for i in range(0, vrows["input_ids"].shape[0], tcfg.batch_size)]
        model: nn.Module = lm.model
        if scfg.peft == "none":
            export = lambda m, out: save_checkpoint(m, out, tok)  # noqa: E731
        else:
            torch.manual_seed(tcfg.seed)  # the adapter's random init (LoRA A) is part of the run
            model = get_peft_model(lm.model, scfg.peft, base_name=scfg.model,
                                   **scfg.peft_options())
            tpl = tok.chat_template if custom is not None else None
            export = lambda m, out: m.save_adapter(out, chat_template=tpl)  # noqa: E731
            if d.is_main:
                print(model.trainable_summary())
        resolved = {"sft": dataclasses.asdict(scfg), "train": dataclasses.asdict(tcfg),
                    "model": lm.cfg.to_dict(), "rows": int(rows["input_ids"].shape[0]),
                    "examples": len(train_ex)}
        if d.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(run_dir / "config.json",
                               (json.dumps(resolved, indent=1) + "\n").encode())
        batches = SFTBatches(rows, tcfg.batch_size, tcfg.seed, d.rank, d.world)
        info = {"n_params": lm.model.num_params(), **param_accounting(model),
                "examples": len(train_ex), "peft": scfg.peft}
        sample_fn = None
        if scfg.sample_prompts and tcfg.sample_tokens and val_ex:
            held = held_out_prompts(val_ex, scfg.sample_prompts, tcfg.seed)
            sample_fn = lambda m: answer_prompts(m, tok, template, held,  # noqa: E731
                                                 tcfg.sample_tokens, scfg.system)
        trainer = Trainer(model, tcfg, run_dir, batches, sft_loss, dist=d, export=export,
                          eval_data=evals, sample_fn=sample_fn, run_info=info,
                          compat={"peft": scfg.peft, "model": scfg.model, "data": scfg.data})
        return trainer.fit()
    finally:
        shutdown(d)
