"""A page's run options become the CLI's flags, checked by the CLI's own parser before a
worker starts; a request can't name files on the server's disk unless the server allows it.
The reference is the CLI itself: the flags the manager builds parse to the same namespace as
the command typed by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmlab.cli import build_parser
from llmlab.lab import options as o


def test_flags_parse_as_the_typed_command(tmp_path: Path) -> None:
    opts = {"preset": "micro", "max_steps": 30, "lr": 0.004, "tensorboard": False,
            "sample_prompt": "-- a value that looks like a flag", "warmup_steps": None}
    flags = o.to_flags(opts)
    ours = build_parser().parse_args(["pretrain", *flags, "--out", str(tmp_path)])
    typed = build_parser().parse_args(["pretrain", "--preset", "micro", "--max-steps", "30",
                                       "--lr", "0.004", "--no-tensorboard", "--sample-prompt=-- "
                                       "a value that looks like a flag", "--out", str(tmp_path)])
    drop = ("fn", "func")  # each parser builds its own handler functions
    assert {k: v for k, v in vars(ours).items() if k not in drop} == \
        {k: v for k, v in vars(typed).items() if k not in drop}


@pytest.mark.parametrize("kind, opts, field", [
    ("pretrain", {"max_steps": 0}, "--max-steps"),
    ("pretrain", {"max_stepz": 3}, "--max-steps"),  # the CLI's "did you mean"
    ("sft", {"data": "trivia", "lora_r": 0}, "--lora-r"),
    ("grpo", {"task": "arithmetic-easy", "epsilon": -1}, "--epsilon"),
    ("dpo", {"task": "trivia-prefs", "beta": "x"}, "--beta"),
])
def test_bad_options_name_their_flag(kind: str, opts: dict, field: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=field):
        o.validate(kind, o.to_flags(opts), tmp_path)


@pytest.mark.parametrize("kind, opts, field", [
    ("pretrain", {"inputs": "kjv,/etc/passwd"}, "inputs"),
    ("pretrain", {"data": "/tmp"}, "data"),
    ("pretrain", {"tokenizer": "/home"}, "tokenizer"),
    ("sft", {"data": "/etc/shadow"}, "data"),
    ("sft", {"data": "trivia", "model": "/root/model"}, "model"),
    ("sft", {"data": "trivia", "chat_template": "/etc/t.json"}, "chat_template"),
    ("grpo", {"task": "arithmetic", "adapter": "/x"}, "adapter"),
    ("ppo", {"task": "arithmetic", "reward_model": "run:nope"}, "reward_model"),
    ("pretrain", {"inputs": "upload:0123"}, "inputs"),
])
def test_paths_are_refused_unless_allowed(kind: str, opts: dict, field: str,
                                          tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"options.{field}"):
        o.check_paths(kind, opts, {}, tmp_path)


def test_managed_and_odd_options_are_refused() -> None:
    for bad in ({"out": "/tmp/x"}, {"resume": True}, {"config": "c.json"}, {"a b": 1},
                {"lr": [1, 2]}):
        with pytest.raises(ValueError, match="options"):
            o.to_flags(bad)


def test_names_resolve_to_files(tmp_path: Path) -> None:
    run = tmp_path / "sft-1"
    (run / "final").mkdir(parents=True)
    (run / "config.json").write_text('{"sft": {"model": "smollm2-135m-instruct", '
                                     '"peft": "lora"}}')
    got = o.resolve({"model": "run:sft-1", "adapter": "run:sft-1", "inputs": "kjv,upload:ab",
                     "max_steps": 3}, {"sft-1": run}, tmp_path / "_corpora")
    assert got == {"model": str(run), "adapter": str(run / "final"),
                   "inputs": f"kjv,{tmp_path / '_corpora' / 'ab.txt'}", "max_steps": 3}


def test_judge_flags_parse_as_the_typed_command(tmp_path: Path) -> None:
    """A judge run is `llmlab eval judge`: the manager's flags (with the server's own URL it
    adds) parse as the command typed by hand, and the judge's own checks run."""
    opts = {"model_a": "smollm2-135m-instruct", "model_b": "smollm2-135m-instruct",
            "judge_model": "run:sft-1", "limit": 2, "judge_base_url": "http://127.0.0.1:8000"}
    ours = build_parser().parse_args([*o.KINDS["judge"], *o.to_flags(opts), "--out", "x"])
    typed = build_parser().parse_args(["eval", "judge", "--model-a", "smollm2-135m-instruct",
                                       "--model-b", "smollm2-135m-instruct", "--judge-model",
                                       "run:sft-1", "--limit", "2", "--judge-base-url",
                                       "http://127.0.0.1:8000", "--out", "x"])
    drop = ("fn", "func")
    assert {k: v for k, v in vars(ours).items() if k not in drop} == \
        {k: v for k, v in vars(typed).items() if k not in drop}
    with pytest.raises(ValueError, match="--limit must be >= 1"):
        o.validate("judge", o.to_flags({**opts, "limit": 0}), tmp_path)


def test_checkpoints_resolve_to_their_model(tmp_path: Path) -> None:
    """run:ID@STEP names checkpoint STEP: its model dir, or for an adapter run the base plus
    that checkpoint's adapter; the judge's model name passes to the server unchanged, and a
    missing step or a checkpoint to train from is an error naming the option."""
    pre, sft = tmp_path / "pre-1", tmp_path / "sft-1"
    for run, cfg in ((pre, "{}"), (sft, '{"sft": {"model": "smollm2-135m-instruct", '
                                          '"peft": "lora"}}')):
        (run / "checkpoints" / "step_0000004" / "model").mkdir(parents=True)
        (run / "config.json").write_text(cfg)
    runs = {"pre-1": pre, "sft-1": sft}
    step = "checkpoints/step_0000004/model"
    got = o.resolve({"model_a": "run:pre-1@4", "model_b": "run:sft-1@4",
                     "judge_model": "run:sft-1@4"}, runs, tmp_path, "judge")
    assert got == {"model_a": str(pre / step), "model_b": "smollm2-135m-instruct",
                   "adapter_b": str(sft / step), "judge_model": "run:sft-1@4"}
    assert o.resolve({"model": "run:pre-1@4"}, runs, tmp_path, "eval") == \
        {"model": str(pre / step)}
    for opts, kind, msg in (({"model": "run:pre-1@5"}, "eval", "no checkpoint at step 5"),
                            ({"model": "run:pre-1@x"}, "eval", "with a step number"),
                            ({"model": "run:pre-1@4"}, "sft", "training starts from")):
        with pytest.raises(ValueError, match=f"options.model: .*{msg}"):
            o.resolve(opts, runs, tmp_path, kind)
    o.check_paths("judge", {"model_b": "run:pre-1@4", "judge_model": "run:sft-1"}, runs,
                  tmp_path)
    with pytest.raises(ValueError, match="options.judge_base_url: an endpoint URL"):
        o.check_paths("judge", {"judge_base_url": "http://x"}, runs, tmp_path)
