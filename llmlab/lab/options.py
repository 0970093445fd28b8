"""A run's options, as the page sends them, become the CLI's own flags, checked by the CLI's
own parser and config validation before any process starts: a bad field is a clear error
naming its flag, never a worker that dies a second later."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

# What a page may start, as the CLI command each one runs.
KINDS: dict[str, list[str]] = {**{k: [k] for k in ("pretrain", "sft", "reward", "dpo", "ppo",
                                                   "grpo", "eval")},
                               "judge": ["eval", "judge"]}
ALIGN = ("reward", "dpo", "ppo", "grpo")
# Set by the manager, never by a request: where the run lives, its threads, its log's form.
MANAGED = ("out", "resume", "threads", "progress", "config", "debug")
UPLOAD = "upload:"  # an uploaded corpus, stored by the manager
RUN = "run:"  # another playground run: its model, adapter or reward model
TOKENIZERS = ("gpt2", "cl100k", "smollm2")  # besides bpe:N, trained on the corpus
PPL = "perplexity:"  # an eval task naming a text: a bundled corpus or an upload
JUDGE_URL = "judge_base_url"  # a judge run's endpoint: this server's own /v1 unless allowed
# Model names sent to the judge endpoint, which resolves them itself: never made into paths.
NOT_PATHS = ("judge_model",)


def _names() -> dict[str, dict[str, tuple[str, ...] | None]]:
    """Per kind, the options that name files or folders, and the names a page may use for
    them; None: not from a request at all. Unless the server allows local paths, nothing
    else reaches the worker, so a request can't make it read the server's disk."""
    from llmlab.align.data import PREF_TASKS, RL_TASKS
    from llmlab.tokenizer.chat_template import TEMPLATES
    from llmlab.weights.registry import REGISTRY

    models = (*REGISTRY, RUN)
    chat = tuple(n for n, spec in REGISTRY.items() if spec.kind == "causal-lm")
    align = {"model": models, "adapter": ("", RUN), "data": None,
             "task": ("", *RL_TASKS, *PREF_TASKS), "reward_model": ("", RUN)}
    return {"pretrain": {"inputs": ("kjv", "pydocs", UPLOAD), "data": None,
                         "tokenizer": (*TOKENIZERS, "bpe:")},
            "sft": {"data": ("trivia", "pydocs"), "model": models,
                    "chat_template": tuple(TEMPLATES)},
            **{k: align for k in ALIGN},
            "eval": {"model": models, "adapter": ("", RUN), "task": eval_tasks()},
            # The judge is this server (/v1/chat/completions): its chat model or a chat run.
            "judge": {"model_a": models, "adapter_a": ("", RUN), "model_b": models,
                      "adapter_b": ("", RUN), "prompts": None, "judge": None, JUDGE_URL: None,
                      "judge_model": ("", *chat, RUN)}}


def eval_tasks() -> tuple[str, ...]:
    """The eval tasks a page may run: no file paths, only bundled data and uploads."""
    from llmlab.data.corpora import CORPORA

    return ("arithmetic", "trivia", "humaneval", "humaneval:chat", "humaneval:completion",
            "gen:pydocs", *(PPL + c for c in CORPORA), PPL + UPLOAD)


# The options naming a model that may be a run's checkpoint (`run:ID@STEP`), with the
# option that takes an adapter run's adapter: an evaluation loads it on the run's base.
CHECKPOINT_MODELS = {"eval": (("model", "adapter"),),
                     "judge": (("model_a", "adapter_a"), ("model_b", "adapter_b"))}


def _refused(key: str) -> str:
    if key == "judge":
        return ("options.judge: a judge run asks this server's /v1/chat/completions; pick "
                "its model with judge_model")
    what = "an endpoint URL" if key == JUDGE_URL else "a local path"
    return f"options.{key}: {what}; this server takes none in requests"


def check_paths(kind: str, options: dict[str, Any], runs: dict[str, Path],
                corpora: Path) -> None:
    """Refuse options that would read the server's disk beyond what the pages offer; the
    `upload:` and `run:` names must exist."""
    for key, allowed in _names().get(kind, {}).items():
        if options.get(key) is None:
            continue
        if allowed is None:
            raise ValueError(_refused(key))
        several = key == "inputs" or (kind == "eval" and key == "task")
        for v in str(options[key]).split(",") if several else [str(options[key])]:
            v = v.strip()
            ok = v in allowed or any(p.endswith(":") and v.startswith(p) for p in allowed)
            if not ok:
                names = ", ".join((a or '""') + ("NAME" if a.endswith(":") else "")
                                  for a in allowed)
                raise ValueError(f"options.{key}: {v!r} is not one of {names} (local paths "
                                 "are disabled on this server)")
            v = v.removeprefix(PPL) if kind == "eval" else v
            if v.startswith(UPLOAD) and not (corpora / f"{v[7:]}.txt").is_file():
                raise ValueError(f"options.{key}: no uploaded corpus {v!r}")
            if v.startswith(RUN) and v[4:].partition("@")[0] not in runs:
                raise ValueError(f"options.{key}: no playground run with a model: {v!r}")


def run_name(key: str, v: str, runs: dict[str, Path], kind: str) -> tuple[Path, int | None]:
    """`run:ID` or `run:ID@STEP` -> (the run's dir, the step or None); a step names one of
    the run's checkpoints, and only an evaluation loads one."""
    run_id, at, step = v[4:].partition("@")
    if not at:
        return runs[run_id], None
    if not step.isdigit():
        raise ValueError(f"options.{key}: {v!r}: expected run:ID@STEP with a step number")
    if key not in {m for pair in CHECKPOINT_MODELS.get(kind, ()) for m in pair} | {
            "judge_model"}:
        raise ValueError(f"options.{key}: {v!r}: a checkpoint can be evaluated or judged; "
                         "training starts from a run's model (run:ID)")
    from llmlab.lab.rundir import model_dir

    try:
        model_dir(runs[run_id], int(step))
    except ValueError as e:
        raise ValueError(f"options.{key}: {str(e).removeprefix('model: ')}") from None
    return runs[run_id], int(step)


def resolve(options: dict[str, Any], runs: dict[str, Path], corpora: Path, kind: str = ""
            ) -> dict[str, Any]:
    """`upload:HASH` and `run:ID[@STEP]` become the files they name: a run's directory
    (llmlab.load resolves it to its model) or a checkpoint's model, or for an adapter option
    the run's adapter directory. An evaluation of an adapter run evaluates its base with the
    adapter, as load_run loads it. Names in NOT_PATHS pass as they are (after a check)."""
    from llmlab.lab.rundir import base_and_adapter, model_dir

    def known(v: Any) -> bool:
        return isinstance(v, str) and v.startswith(RUN) and v[4:].partition("@")[0] in runs

    for key in NOT_PATHS:
        if known(options.get(key)):
            run_name(key, options[key], runs, kind)
    for model, adapter in CHECKPOINT_MODELS.get(kind, ()):
        v = options.get(model)
        if not known(v) or options.get(adapter):
            continue
        path, step = run_name(model, v, runs, kind)
        base, adapter_dir = base_and_adapter(path, step)
        options = {**options, model: base, **({adapter: str(adapter_dir)} if adapter_dir else {})}

    def one(key: str, v: str) -> str:
        if v.startswith(PPL + UPLOAD):
            return PPL + one(key, v[len(PPL):])
        if v.startswith(UPLOAD):
            return str(corpora / f"{v[7:]}.txt")
        if known(v):
            path, step = run_name(key, v, runs, kind)
            if key.startswith("adapter") or step is not None:
                return str(model_dir(path, step))
            return str(path)
        return v

    return {k: v if k in NOT_PATHS else
            ",".join(one(k, p.strip()) for p in v.split(",")) if isinstance(v, str) else v
            for k, v in options.items()}


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


def validate(kind: str, flags: list[str], out: Path) -> Any:
    """Parse `llmlab KIND FLAGS --out OUT` with the CLI's parser, then run the command's own
    config checks (types, ranges, cross-field rules); ValueError with the CLI's message.
    Returns pretraining's resolved DataConfig (the manager caches prepared data by it)."""
    from llmlab.cli import build_parser
    from llmlab.train.config import TrainConfig
    from llmlab.train.flags import from_flags

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
        from llmlab.train.cli import resolve as resolve_pretrain

        return resolve_pretrain(ns)[2]
    if kind == "eval":
        from llmlab.eval.cli import check_args

        check_args(ns)
    elif kind == "judge":
        from llmlab.eval.judge import check_judge_args

        check_judge_args(ns)
    elif kind == "sft":
        from llmlab.train.config import SFTConfig
        from llmlab.train.sft_cli import SFT_TRAIN

        from_flags(SFTConfig, ns, ns._sft_fields, "sft config")
        from_flags(TrainConfig, ns, ns._train_fields, "train config", SFT_TRAIN)
    else:
        from llmlab.align.cli import ALGO_CONFIGS, train_defaults
        from llmlab.align.config import AlignConfig

        acfg = from_flags(AlignConfig, ns, ns._align_fields, "align config")
        if kind in ALGO_CONFIGS:
            from_flags(ALGO_CONFIGS[kind], ns, ns._algo_fields, f"{kind} config")
        from_flags(TrainConfig, ns, ns._train_fields, "train config",
                   train_defaults(kind, acfg.peft))
    return None
