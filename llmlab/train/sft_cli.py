"""CLI: `llmlab sft` and `llmlab lora merge` (wired in by `add_commands`). It sits in train/,
above peft/: SFT is a training run that may add adapters."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmlab.cliutil import guard, strict
from llmlab.train.config import PRETRAIN_ONLY, TrainConfig
from llmlab.train.flags import add_dataclass_args, from_flags

# SFT defaults that differ from pretraining's (small data, a pretrained model). SFT samples are
# the answers to --sample-prompts held-out prompts: 24 tokens hold a short answer.
SFT_TRAIN = dict(max_steps=200, batch_size=8, seq_len=256, lr=2e-4, warmup_steps=10,
                 weight_decay=0.0, eval_every=50, eval_batches=8, ckpt_every=100, log_every=10,
                 sample_tokens=24)
FULL_FT_LR = 2e-5


def cmd_sft(a: argparse.Namespace) -> int:
    from llmlab.train.config import SFTConfig
    from llmlab.train.sft import run_sft

    scfg = from_flags(SFTConfig, a, a._sft_fields, "sft config")
    train = {**SFT_TRAIN, **({"lr": FULL_FT_LR} if scfg.peft == "none" else {})}
    tcfg = from_flags(TrainConfig, a, a._train_fields, "train config", train)
    out = run_sft(scfg, tcfg, a.out)
    if out.get("stopped"):
        from llmlab.train.cli import stopped_message

        print(stopped_message(out, a.out))
        return 0
    vl = out["val_loss"]
    print(f"done: {out['step']} steps, {out['tokens']:,} trained tokens"
          + (f", val loss {vl:.4f}" if vl is not None else "")
          + f"; {'model' if scfg.peft == 'none' else 'adapter'} in {Path(a.out) / 'final'}")
    return 0


def cmd_lora_merge(a: argparse.Namespace) -> int:
    import llmlab
    from llmlab.peft.model import adopt_template, load_adapter

    lm = llmlab.load(a.model)
    pm = load_adapter(lm.model, a.adapter)
    adopt_template(lm, a.adapter)  # the merged model chats as the adapter was trained
    merged = pm.merge_and_unload()
    if a.hf:
        from llmlab.weights.hf import save_hf

        save_hf(merged, a.out, lm.tokenizer)
    else:
        from llmlab.weights.registry import save_checkpoint

        save_checkpoint(merged, a.out, lm.tokenizer)  # type: ignore[arg-type]
    print(f"merged {a.adapter} into {a.model} -> {a.out}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `sft` and `lora merge`."""
    from llmlab.train.config import SFTConfig

    p = subparsers.add_parser(
        "sft", help="supervised fine-tuning (full or LoRA/DoRA/QLoRA/prompt/prefix/adapter)",
        description="Fine-tune on chat JSONL, Alpaca JSON(L) or a bundled task (trivia, "
                    "pydocs). Every SFT and training field is a flag.")
    strict(p)
    p.add_argument("--out", required=True, help="run directory (required)")
    sf = add_dataclass_args(p, SFTConfig, "sft")
    tf = add_dataclass_args(p, TrainConfig, "training", defaults=SFT_TRAIN, skip=PRETRAIN_ONLY,
                            notes={"lr": f"{FULL_FT_LR:g} with --peft none"})
    assert not set(sf) & set(tf), f"config fields share a flag: {set(sf) & set(tf)}"
    p.set_defaults(fn=guard(cmd_sft), func=guard(cmd_sft), _sft_fields=sf, _train_fields=tf)

    lp = subparsers.add_parser("lora", help="LoRA adapters")
    lsub = lp.add_subparsers(dest="lora_command", required=True)
    m = lsub.add_parser("merge", help="fold a LoRA/DoRA adapter into the base weights")
    m.add_argument("--model", required=True, help="base model name or directory")
    m.add_argument("--adapter", required=True, help="adapter dir (llmlab's or PEFT's)")
    m.add_argument("--out", required=True, help="directory for the merged model (required)")
    m.add_argument("--hf", action="store_true",
                   help="write a transformers directory (config.json) instead of an llmlab "
                        "checkpoint")
    m.set_defaults(fn=guard(cmd_lora_merge), func=guard(cmd_lora_merge))

