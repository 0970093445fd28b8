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
