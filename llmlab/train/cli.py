"""CLI: `llmlab data prepare`, `llmlab pretrain`, `llmlab report`.

The lead wires `add_commands` into llmlab/cli.py; until then `python -m llmlab.train.cli ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llmlab.cliutil import guard
from llmlab.model import ModelConfig
from llmlab.train.config import (
    TrainConfig,
    add_dataclass_args,
    build,
    overrides,
    unknown_flags_error,
)

# Set from the tokenizer (or not per-field settable), so they get no flag.
_MODEL_SKIP = ("extra", "bos_token_id", "eos_token_id", "pad_token_id")


class _StrictParser(argparse.ArgumentParser):
    """Reports an unknown option with the closest valid one and the full list, instead of
    argparse's bare 'unrecognized arguments'."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        ns, extra = super().parse_known_args(args, namespace)
        if extra:
            valid = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
            self.error(unknown_flags_error(extra, valid))
        return ns, extra


_guard = guard  # see llmlab/cliutil.py


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


def resolve(a: argparse.Namespace) -> tuple[dict[str, Any], TrainConfig, Any, str | None]:
    """Preset (or the run's saved config when resuming), then --config, then flags."""
    from llmlab.train.presets import DataConfig, get_preset

    saved = Path(a.out) / "config.json"
    if a.resume and saved.exists() and not a.preset:
        base = json.loads(saved.read_text())
        preset = base.get("preset")
    else:
        preset = a.preset or "tiny-cpu"
        base = get_preset(preset)
    if a.config:
        extra = json.loads(Path(a.config).read_text())
        bad = sorted(set(extra) - {"model", "train", "data", "preset"})
        if bad:
            raise ValueError(f"{a.config}: unknown section(s) {bad}; valid: model, train, data")
        for k in ("model", "train", "data"):
            base[k] = {**base.get(k, {}), **extra.get(k, {})}
    model = {k: v for k, v in base.get("model", {}).items() if k not in _MODEL_SKIP}
    model.update(overrides(a, a._model_fields))
    tcfg = build(TrainConfig, {**base.get("train", {}), **overrides(a, a._train_fields)},
                 "train config")
    dcfg = build(DataConfig, {**base.get("data", {}), **overrides(a, a._data_fields)},
                 "data config")
    build(ModelConfig, {k: v for k, v in model.items()}, "model config")  # name check now
    return model, tcfg, dcfg, preset


def cmd_pretrain(a: argparse.Namespace) -> int:
    from llmlab.train.pretrain import run_pretrain

    model, tcfg, dcfg, preset = resolve(a)
    out = run_pretrain(model, tcfg, dcfg, a.out, preset)
    if tcfg.progress:
        vl, uni = out["val_loss"], out.get("unigram_entropy_nats")
        print(f"done: {out['step']} steps, {out['tokens']:,} tokens"
              + (f", val loss {vl:.4f}" if vl is not None else "")
              + (f" (unigram baseline {uni:.4f})" if vl is not None and uni else "")
              + f"; model in {Path(a.out) / 'final'}")
    return 0


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
    p.add_argument("--out", required=True)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--shard-tokens", type=int, default=100_000_000)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_guard(cmd_prepare), func=_guard(cmd_prepare))

    p = subparsers.add_parser(
        "pretrain", help="train a GPT on text (next-token prediction)",
        description="Every field of the model, training and data configs is a flag; "
                    "`--resume` continues the run in --out from its latest checkpoint.")
    p.__class__ = _StrictParser  # add_parser builds the parent's class; we want strict flags
    p.allow_abbrev = False  # "--max-step" must not silently mean --max-steps
    p.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)} "
                   "(default tiny-cpu; on --resume the run's saved config)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--config", default=None, help="JSON with model/train/data sections")
    tf = add_dataclass_args(p, TrainConfig, "training")
    mf = add_dataclass_args(p, ModelConfig, "model", skip=_MODEL_SKIP)
    df = add_dataclass_args(p, DataConfig, "data")
    clash = set(tf) & set(mf) | set(tf) & set(df) | set(mf) & set(df)
    assert not clash, f"config fields share a flag: {clash}"
    p.set_defaults(fn=_guard(cmd_pretrain), func=_guard(cmd_pretrain), _train_fields=tf,
                   _model_fields=mf, _data_fields=df)

    p = subparsers.add_parser("report", help="loss curves (PNG) and summary of a run")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/loss.png)")
    p.add_argument("--peak-flops", type=float, default=None,
                   help="peak FLOP/s for MFU (default: from the device name, see report.py)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_guard(cmd_report), func=_guard(cmd_report))


def main(argv: list[str] | None = None) -> int:
    """`python -m llmlab.train.cli ...` is the same as `llmlab ...`."""
    from llmlab.cli import main as llmlab_main

    return llmlab_main(argv)


if __name__ == "__main__":
    sys.exit(main())
