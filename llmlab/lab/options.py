"""A run's options, as the page sends them, become the CLI's own flags, checked by the CLI's
own parser and config validation before any process starts: a bad field is a clear error
naming its flag, never a worker that dies a second later."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

# What a page may start, as the CLI command each one runs.
KINDS: dict[str, list[str]] = {"pretrain": ["pretrain"], "sft": ["sft"]}
# Set by the manager, never by a request: where the run lives, its threads, its log's form.
MANAGED = ("out", "resume", "threads", "progress", "config", "debug")
# Options that name files or folders on the server's disk. Unless the server allows local
# paths, each must be one of the names a page can offer (bundled data, registered models).
BUNDLED_INPUTS = ("kjv", "pydocs")
TOKENIZERS = ("gpt2", "cl100k", "smollm2")
SFT_DATA = ("trivia", "pydocs")
UPLOAD = "upload:"  # an uploaded corpus, stored by the manager
RUN = "run:"  # another playground run's model


def to_flags(options: dict[str, Any]) -> list[str]:
    """{"max_steps": 30, "packing": False} -> ["--max-steps=30", "--no-packing"]."""
    out: list[str] = []
    for k, v in options.items():
        if not isinstance(k, str) or not k.replace("_", "").isalnum():
            raise ValueError(f"options: {k!r} is not an option name")
        if k in MANAGED:
            raise ValueError(f"options.{k}: set by the run manager, not by a request")
        flag = "--" + k.replace("_", "-")
        if v is None:
            continue
        if isinstance(v, bool):
            out.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, (int, float, str)):
            out.append(f"{flag}={v}")  # one token: a value starting with "-" stays a value
        else:
            raise ValueError(f"options.{k}: expected a string, number or boolean, got "
                             f"{type(v).__name__}")
    return out


def check_paths(kind: str, options: dict[str, Any], known_runs: set[str],
                corpora: Path) -> None:
    """Refuse options that would make the worker read the server's disk outside what the
    pages offer; `upload:` and `run:` names must exist."""
    def one_of(key: str, value: str, names: tuple[str, ...]) -> None:
        if value.startswith(UPLOAD):
            if kind == "pretrain" and key == "inputs" and (corpora / f"{value[7:]}.txt").is_file():
                return
            raise ValueError(f"options.{key}: no uploaded corpus {value!r}")
        if value.startswith(RUN):
            if value[4:] in known_runs:
                return
            raise ValueError(f"options.{key}: no playground run {value!r}")
        if value not in names:
            raise ValueError(f"options.{key}: {value!r} is not one of {', '.join(names)} "
                             "(local paths are disabled on this server)")

    if kind == "pretrain":
        if options.get("data") is not None:
            raise ValueError("options.data: a prepared data dir is a local path; use inputs")
        for name in str(options.get("inputs") or "kjv").split(","):
            one_of("inputs", name.strip(), BUNDLED_INPUTS)
        tok = str(options.get("tokenizer") or "bpe:4096")
        if not tok.startswith("bpe:"):
            one_of("tokenizer", tok, TOKENIZERS)
    elif kind == "sft":
        one_of("data", str(options.get("data") or ""), SFT_DATA)
        from llmlab.weights.registry import REGISTRY

        one_of("model", str(options.get("model") or "smollm2-135m-instruct"), tuple(REGISTRY))
        if options.get("chat_template") is not None:
            from llmlab.tokenizer.chat_template import TEMPLATES

            one_of("chat_template", str(options["chat_template"]), tuple(TEMPLATES))


def resolve_names(flags: list[str], runs: dict[str, Path], corpora: Path) -> list[str]:
    """`upload:HASH` and `run:ID` in flag values become the files they name."""
    def one(v: str) -> str:
        parts = []
        for p in v.split(","):
            p = p.strip()
            if p.startswith(UPLOAD):
                p = str(corpora / f"{p[7:]}.txt")
            elif p.startswith(RUN) and p[4:] in runs:
                p = str(runs[p[4:]])
            parts.append(p)
        return ",".join(parts)

    return [f"{f.split('=', 1)[0]}={one(f.split('=', 1)[1])}" if "=" in f else f
            for f in flags]


def validate(kind: str, flags: list[str], out: Path) -> Any:
    """Parse `llmlab KIND FLAGS --out OUT` with the CLI's parser, then run the command's own
    config checks (types, ranges, cross-field rules); ValueError with the CLI's message.
    Returns pretraining's resolved DataConfig (the manager caches prepared data by it)."""
    from llmlab.cli import build_parser

    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = build_parser().parse_args([*KINDS[kind], *flags, "--out", str(out)])
    except SystemExit:
        msg = err.getvalue().strip().splitlines()
        raise ValueError("options: " + (msg[-1].split("error: ", 1)[-1] if msg else
                                        "invalid")) from None
    if kind == "pretrain":
        from llmlab.train.cli import resolve

        return resolve(ns)[2]
    if kind == "sft":
        from llmlab.train.config import SFTConfig, TrainConfig, from_flags
        from llmlab.train.sft_cli import SFT_TRAIN

        from_flags(SFTConfig, ns, ns._sft_fields, "sft config")
        from_flags(TrainConfig, ns, ns._train_fields, "train config", SFT_TRAIN)
    return None
