"""SFT step with the LM head at trainable positions only vs over every position.

    PYTHONPATH=. python benchmarks/sft_loss.py [--batch 4 --seq 256 --rounds 4 --threads 1]

`sft_loss` runs the head (576 x 49,152 for SmolLM2) only where labels are not -100; the
comparison computes the same loss from the full (B, T, vocab) logits with the rest ignored,
which is what a causal-LM loss with ignored labels does (transformers' included). Same model
(SmolLM2-135M shape, random weights, LoRA r=16 all-linear), same packed batch of the bundled
trivia SFT set, one process, the two alternating each round; CPU seconds of forward + backward
at 1 thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from _common import emit, print_machine

from llmlab.model import Transformer
from llmlab.model.config import preset
from llmlab.peft.model import get_peft_model
from llmlab.tokenizer.chat_template import SMOLLM2_SYSTEM, ChatTemplate
from llmlab.tokenizer.loaders import load_tokenizer
from llmlab.train.sft import IGNORE, pack, sft_loss, tokenize_examples
from llmlab.train.sft_data import load_examples


def full_logits_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(batch["input_ids"], positions=batch["positions"],
                   doc_ids=batch["doc_ids"]).logits
    return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(),
                           ignore_index=IGNORE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    print_machine(threads=a.threads)
    torch.set_num_threads(a.threads)
    tok = load_tokenizer("smollm2")
    ex = load_examples("trivia", "auto", "train")[: 40 * a.batch]
    rows = pack(tokenize_examples(tok, ChatTemplate(default_system=SMOLLM2_SYSTEM), ex, a.seq),
                a.seq, tok.eos_id or 0)
    batch = {k: v[: a.batch] for k, v in rows.items()}
    frac = float((batch["labels"] != IGNORE).float().mean())
    torch.manual_seed(0)
    model = get_peft_model(Transformer(preset("smollm2-135m", max_seq_len=2048)), "lora", r=16,
                           lora_alpha=32, target_modules="all-linear").train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                            fused=True)
    fns = {"selected positions (sft_loss)": lambda: sft_loss(model, batch)[0],
           "all positions": lambda: full_logits_loss(model, batch)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    losses: dict[str, float] = {}
    for rnd in range(a.rounds + 1):
        for name, fn in fns.items():
            c = time.process_time()
            loss = fn()
            loss.backward()
            opt.zero_grad(set_to_none=True)  # no step: both see the same weights each round
            if rnd:
                times[name].append(time.process_time() - c)
            losses[name] = loss.item()
    print(f"B x T = {a.batch} x {a.seq}, trainable positions {100 * frac:.1f}%, "
          f"{a.threads} thread(s), {a.rounds} rounds")
    sel, full = (statistics.median(v) for v in times.values())
    for name, v in times.items():
        print(f"{name:30s} median {statistics.median(v):.3f} CPU s/step  loss {losses[name]:.6f}")
    print(f"speed-up {full / sel:.2f}x")
    emit({"batch": a.batch, "seq": a.seq, "threads": a.threads, "rounds": a.rounds,
          "trainable_positions": frac,
          "cpu_s_per_step": {k: statistics.median(v) for k, v in times.items()},
          "loss": losses, "speedup": full / sel})


if __name__ == "__main__":
    main()
