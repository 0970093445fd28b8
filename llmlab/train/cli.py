"""CLI: `llmlab data prepare`, `llmlab pretrain`, `llmlab report`.

The lead wires `add_commands` into llmlab/cli.py; until then `python -m llmlab.train.cli ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llmlab.cliutil import guard, strict
from llmlab.model import ModelConfig
from llmlab.train.config import TrainConfig, build, check_fields
from llmlab.train.flags import Derived, add_dataclass_args, flag_name, overrides

# Set from the tokenizer (or not per-field settable), so they get no flag.
_MODEL_SKIP = ("extra", "bos_token_id", "eos_token_id", "pad_token_id")




def cmd_prepare(a: argparse.Namespace) -> int:
    from llmlab.train.data import prepare

    m = prepare(a.input, a.tokenizer, a.out, a.val_fraction, a.shard_tokens,
                progress=not a.quiet)
    s = m["splits"]
    pc = m["pieces"]
    print(f"{a.out}: {m['documents']} docs; train {s['train']['tokens']:,} tokens "
          f"({pc['train']} pieces), val {s['val']['tokens']:,} ({pc['val']}), {m['dtype']}, "
          f"vocab {m['tokenizer']['n_vocab']}, unigram entropy "
          f"{m['unigram_entropy_nats']:.3f} nats")
    return 0


SECTIONS = ("model", "train", "data")


def read_config(path: str) -> dict[str, Any]:
    """The --config file's sections (and its preset, if any), every field's type and range
    checked against the config dataclasses; errors name the file and the field
    (`cfg.json: model.n_head: ...`)."""
    from llmlab.train.presets import PRESETS, DataConfig

    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object with model/train/data sections, "
                         f"got {_json_kind(cfg)}")
    bad = sorted(set(cfg) - {*SECTIONS, "preset"})
    if bad:
        raise ValueError(f"{path}: unknown section(s) {bad}; valid: {', '.join(SECTIONS)}")
    preset = cfg.get("preset")  # a run's saved config.json names its preset
    if preset is not None and not isinstance(preset, str):
        raise ValueError(f"{path}: preset: expected a string, got {preset!r}")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"{path}: unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    classes = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}
    out: dict[str, Any] = {"preset": preset}
    for k in SECTIONS:
        sec = cfg.get(k, {})
        if not isinstance(sec, dict):
            raise ValueError(f"{path}: {k}: expected an object of fields, got {_json_kind(sec)}")
        # Set from the tokenizer: a copy of a run's saved config may carry them; ignored.
        sec = {n: v for n, v in sec.items() if k != "model" or n not in _MODEL_SKIP}
        check_fields(classes[k], sec, lambda name, k=k: f"{path}: {k}.{name}")
        out[k] = sec
    return out


def _json_kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(v), "a number")


def resolve(a: argparse.Namespace) -> tuple[dict[str, Any], TrainConfig, Any, str | None]:
    """Preset (or the run's saved config when resuming), then --config, then flags; every
    value is checked before any work starts, errors naming where it came from."""
    from llmlab.train.presets import DataConfig, get_preset

    saved = Path(a.out) / "config.json"
    extra = read_config(a.config) if a.config else None
    if a.resume and saved.exists() and not a.preset:
        base = json.loads(saved.read_text())
        preset = base.get("preset")
        sources = [str(saved)]
    else:
        # --preset, else the config file's, else the default
        preset = a.preset or (extra or {}).get("preset") or "tiny-cpu"
        base = get_preset(preset)
        sources = [f"preset {preset}"]
    if extra is not None:
        for k in SECTIONS:
            base[k] = {**base.get(k, {}), **extra[k]}
        sources.append(a.config)
    flags = {k: overrides(a, getattr(a, f"_{k}_fields")) for k in SECTIONS}
    classes = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}
    for k in SECTIONS:  # argparse checked their types; ranges here, named as flags
        check_fields(classes[k], flags[k], flag_name)
    if any(flags.values()):
        sources.append("flags")
    if getattr(a, "depth", None) is not None:  # the dial, between the preset and the flags
        from llmlab.train.depth import from_depth

        derived = from_depth(a.depth, base, flags)
        base = {**base, **{k: {**base.get(k, {}), **derived[k]} for k in derived}}
        sources.insert(len(sources) - bool(any(flags.values())), f"--depth {a.depth}")
    where = " + ".join(sources)
    model = {k: v for k, v in base.get("model", {}).items() if k not in _MODEL_SKIP}
    model.update(flags["model"])
    tcfg = build(TrainConfig, {**base.get("train", {}), **flags["train"]},
                 f"train config ({where})")
    dcfg = build(DataConfig, {**base.get("data", {}), **flags["data"]},
                 f"data config ({where})")
    build(ModelConfig, model, f"model config ({where})")  # cross-field checks now
    return model, tcfg, dcfg, preset


def cmd_pretrain(a: argparse.Namespace) -> int:
    from llmlab.train.pretrain import run_pretrain

    model, tcfg, dcfg, preset = resolve(a)
    out = run_pretrain(model, tcfg, dcfg, a.out, preset)
    if out.get("stopped"):
        print(stopped_message(out, a.out))
    elif tcfg.progress:
        vl, uni = out["val_loss"], out.get("unigram_entropy_nats")
        print(f"done: {out['step']} steps, {out['tokens']:,} tokens"
              + (f", val loss {vl:.4f}" if vl is not None else "")
              + (f" (unigram baseline {uni:.4f})" if vl is not None and uni else "")
              + f"; model in {Path(a.out) / 'final'}")
    return 0


def stopped_message(out: dict[str, Any], run_dir: str) -> str:
    return (f"stopped by SIGTERM after step {out['step']}, with a checkpoint; continue with "
            f"the same command plus --resume (--out {run_dir})")


def cmd_report(a: argparse.Namespace) -> int:
    from llmlab.train.report import format_summary, plot, summarize

    s = summarize(a.run_dir, a.peak_flops)
    png = plot(a.run_dir, a.out)
    s["plot"] = str(png)
    (Path(a.run_dir) / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    print(json.dumps(s, indent=1) if a.json else format_summary(s) + f"\nplot           {png}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `data prepare`, `pretrain` and `report`."""
    from llmlab.train.presets import PRESETS, DataConfig

    dp = subparsers.add_parser("data", help="prepare training data")
    dsub = dp.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("prepare", help="tokenize text into memmapped token shards")
    p.add_argument("--input", nargs="+", required=True,
                   help="files/dirs (.txt, .jsonl with 'text', .parquet) or kjv, pydocs")
    p.add_argument("--tokenizer", required=True, help="gpt2|cl100k|smollm2|DIR|bpe:N")
    p.add_argument("--out", required=True, help="output directory for the token shards")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of the documents held out for validation (default: 0.05)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000,
                   help="tokens per shard file (default: 100000000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=guard(cmd_prepare), func=guard(cmd_prepare))

    p = subparsers.add_parser(
        "pretrain", help="train a GPT on text (next-token prediction)",
        description="Every field of the model, training and data configs is a flag; "
                    "`--resume` continues the run in --out from its latest checkpoint.")
    strict(p)
    p.add_argument("--preset", default=None, help=f"named model/train/data settings, one of: "
                   f"{', '.join(PRESETS)} (default: tiny-cpu; on --resume the run's saved "
                   "config)")
    p.add_argument("--out", required=True, help="run directory (required)")
    p.add_argument("--config", default=None,
                   help="JSON file with model/train/data sections of the fields below; "
                        "applied over the preset, flags over it (default: none)")
    p.add_argument("--depth", type=int, default=None, metavar="INT",
                   help="one dial for the model size, as nanochat's: n_layer = depth, d_model "
                        "= 32 x depth, 32-wide heads, d_ff = 8/3 d_model (swiglu), lr scaled "
                        "by (d_model / the preset's) ** -0.5; explicit flags win (default: "
                        "none, the preset's shape)")
    # Defaults shown are the default preset's (tiny-cpu): what a run without --preset gets.
    preset = PRESETS["tiny-cpu"]
    note = "defaults shown: the tiny-cpu preset's; --preset and --config change them"
    tf = add_dataclass_args(p, TrainConfig, "training", defaults=preset["train"],
                            description=note)
    model_defaults = {"vocab_size": Derived("the tokenizer's vocabulary size"),
                      "max_seq_len": Derived("--seq-len"), **preset["model"]}
    mf = add_dataclass_args(p, ModelConfig, "model", skip=_MODEL_SKIP,
                            defaults=model_defaults, description=note)
    df = add_dataclass_args(p, DataConfig, "data", defaults=preset["data"], description=note)
    clash = set(tf) & set(mf) | set(tf) & set(df) | set(mf) & set(df)
    assert not clash, f"config fields share a flag: {clash}"
    p.set_defaults(fn=guard(cmd_pretrain), func=guard(cmd_pretrain), _train_fields=tf,
                   _model_fields=mf, _data_fields=df)

    p = subparsers.add_parser("report", help="loss curves (PNG) and summary of a run")
    p.add_argument("run_dir", help="a `llmlab pretrain|sft|dpo|...` run directory")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/loss.png)")
    p.add_argument("--peak-flops", type=float, default=None,
                   help="peak FLOP/s for MFU (default: from the device name, see report.py)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(fn=guard(cmd_report), func=guard(cmd_report))


def main(argv: list[str] | None = None) -> int:
    """`python -m llmlab.train.cli ...` is the same as `llmlab ...`."""
    from llmlab.cli import main as llmlab_main

    return llmlab_main(argv)


if __name__ == "__main__":
    sys.exit(main())
