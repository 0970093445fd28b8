"""Every subcommand's flags explain themselves: a description on each, and for a config
dataclass's flags the field's documentation, its choices and the default the command really
uses (read back from the config it builds). Repeated flags that only keep one value refuse."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from llmlab.cli import build_parser, main
from llmlab.train.flags import field_docs, show_default


def _commands(p: argparse.ArgumentParser, path: tuple[str, ...] = ()
              ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for act in p._actions:
        if isinstance(act, argparse._SubParsersAction):
            for name, sp in act.choices.items():
                yield (*path, name), sp
                yield from _commands(sp, (*path, name))


PARSER = build_parser()
COMMANDS = dict(_commands(PARSER))


def _options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if not isinstance(a, (argparse._HelpAction,
                                                        argparse._SubParsersAction))
            and a.help != argparse.SUPPRESS]


def test_the_commands_the_issue_names_are_all_checked() -> None:
    names = {" ".join(c) for c in COMMANDS}
    assert {"pretrain", "sft", "dpo", "ppo", "grpo", "reward", "eval", "rag eval",
            "rag query", "rag index", "serve", "data prepare", "tokenizer train"} <= names


@pytest.mark.parametrize("cmd", list(COMMANDS), ids=" ".join)
def test_every_option_has_a_description_shown_in_help(cmd: tuple[str, ...]) -> None:
    p = COMMANDS[cmd]
    text = "".join(p.format_help().split())  # whitespace-free: wrapping differs by width
    for a in _options(p):
        name = a.option_strings[0] if a.option_strings else a.dest
        desc = (a.help or "").split("(default:")[0].strip(" ;")
        assert desc, f"llmlab {' '.join(cmd)} {name}: no description"
        assert "".join((a.help or "").replace("%%", "%").split()) in text, name


# Each command's config dataclasses, and how to capture the configs its handler builds.
def _dataclass_flags(cmd: str) -> list[tuple[type, str, argparse.Action]]:
    from llmlab.align.cli import ALGO_CONFIGS, AlignConfig
    from llmlab.model import ModelConfig
    from llmlab.train.config import SFTConfig, TrainConfig
    from llmlab.train.presets import DataConfig

    groups: dict[str, tuple[type, str]] = {
        "training": (TrainConfig, "train"), "model": (ModelConfig, "model"),
        "data": (DataConfig, "data"), "sft": (SFTConfig, "sft"),
        "align": (AlignConfig, "align"),
        **{a: (ALGO_CONFIGS[a], "algo") for a in ALGO_CONFIGS}}
    out = []
    for g in COMMANDS[(cmd,)]._action_groups:  # a flag's group says whose field it is
        if g.title in groups:
            cls, key = groups[g.title]
            names = {f.name for f in dataclasses.fields(cls)}
            out += [(cls, key, a) for a in g._group_actions if a.dest in names]
    return out


def _used_configs(cmd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                  ) -> dict[str, Any]:
    """The configs `llmlab CMD --out DIR` (no other flag) would train with."""
    got: dict[str, Any] = {}
    if cmd == "pretrain":
        def fake(model: dict[str, Any], tcfg: Any, dcfg: Any, *a: Any) -> dict[str, Any]:
            got.update(model=model, train=tcfg, data=dcfg)
            return {"step": 0, "tokens": 0, "val_loss": None}

        monkeypatch.setattr("llmlab.train.pretrain.run_pretrain", fake)
    elif cmd == "sft":
        def fake_sft(scfg: Any, tcfg: Any, out: Any) -> dict[str, Any]:
            got.update(sft=scfg, train=tcfg)
            return {"step": 0, "tokens": 0, "val_loss": None}

        monkeypatch.setattr("llmlab.train.sft.run_sft", fake_sft)
    else:
        def fake_run(algo: str, acfg: Any, tcfg: Any, run_dir: Any, gcfg: Any = None
                     ) -> dict[str, Any]:
            got.update(align=acfg, train=tcfg, algo=gcfg)
            return {"step": 0}

        monkeypatch.setattr("llmlab.align.cli.run", fake_run)
    assert main([cmd, "--out", str(tmp_path / "run")]) == 0
    return got


@pytest.mark.parametrize("cmd", ["pretrain", "sft", "reward", "dpo", "ppo", "grpo"])
def test_dataclass_flags_show_doc_choices_and_the_default_used(
        cmd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    used = _used_configs(cmd, tmp_path, monkeypatch)
    flags = _dataclass_flags(cmd)
    assert len(flags) > 10
    for cls, key, act in flags:
        name, help_ = act.dest, act.help.replace("%%", "%")
        doc = field_docs(cls).get(name)
        assert doc and help_.startswith(doc.rstrip(".")), f"{cmd} {act.option_strings[0]}"
        tp = typing.get_type_hints(cls)[name]
        if typing.get_origin(tp) is Literal:
            assert act.choices == list(typing.get_args(tp))
            assert "one of: " + ", ".join(typing.get_args(tp)) in help_
        shown = help_.rsplit("(default: ", 1)[1].rstrip(")").split("; ")[0]
        cfg = used[key]
        if isinstance(cfg, dict):  # pretrain's model: a dict; the rest from the tokenizer
            if name not in cfg:
                default = next(f for f in dataclasses.fields(cls) if f.name == name).default
                assert shown in (show_default(default), "the tokenizer's vocabulary size"), name
                continue
            value = cfg[name]
        else:
            value = getattr(cfg, name)
        assert shown == show_default(value), f"{cmd} {act.option_strings[0]}: {shown} != {value}"


def test_dpo_help_text_lists_meaning_default_and_choices(
        capsys: pytest.CaptureFixture[str]) -> None:
    from llmlab.align.cli import AlignConfig

    with pytest.raises(SystemExit) as e:
        main(["dpo", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    beta = next(f for f in dataclasses.fields(AlignConfig) if f.name == "beta")
    assert f"--beta FLOAT {field_docs(AlignConfig)['beta']} (default: {beta.default})" in out
    assert "--pref-pairing {extremes,length-matched,perturbed}" in out


def test_a_percent_sign_in_a_field_comment_does_not_break_help() -> None:
    from llmlab.train.flags import add_dataclass_args

    @dataclasses.dataclass
    class C:
        rate: float = 0.5  # share kept, e.g. 50% of the rows
        mode: Literal["a", "b"] = "a"
        extra: int = dataclasses.field(default=3, metadata={"help": "from metadata"})

    p = argparse.ArgumentParser()
    add_dataclass_args(p, C, "c")
    text = p.format_help()
    assert "50% of the rows (default: 0.5)" in " ".join(text.split())
    assert "one of: a, b (default: a)" in " ".join(text.split())
    assert "from metadata (default: 3)" in " ".join(text.split())


# ----------------------------------------------------------------------------- repeated flags


def test_rag_eval_evaluates_every_repeated_method(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    qrels = tmp_path / "q.jsonl"
    qrels.write_text(json.dumps({"query": "q", "relevant": ["a.txt"]}) + "\n")
    seen: list[list[str]] = []

    def fake_evaluate(idx: Any, q: Any, methods: list[str], k: int, *a: Any, **kw: Any
                      ) -> dict[str, dict[str, float]]:
        seen.append(list(methods))
        return {m: {f"recall@{k}": 1.0} for m in methods}

    monkeypatch.setattr("llmlab.rag.cli._open", lambda store: object())
    monkeypatch.setattr("llmlab.rag.evaluate.evaluate", fake_evaluate)
    argv = ["rag", "eval", "--store", str(tmp_path), "--qrels", str(qrels), "--json"]
    assert main([*argv, "--method", "bm25", "--method", "dense", "--method", "bm25"]) == 0
    assert seen[-1] == ["bm25", "dense"]  # each once, in the order given
    assert set(json.loads(capsys.readouterr().out)) == {"bm25", "dense"}
    assert main(argv) == 0 and seen[-1] == ["bm25", "dense", "hybrid"]
    capsys.readouterr()
    assert main([*argv, "--method", "bm25", "--method", "magic"]) == 2
    assert "valid: dense, bm25, hybrid" in capsys.readouterr().err
    assert main([*argv, "--method", "bm25", "--rerank"]) == 2  # rerank applies to hybrid only
    assert "--rerank" in capsys.readouterr().err and len(seen) == 2


def test_rag_query_refuses_a_repeated_method(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rag", "query", "--store", str(tmp_path), "--method", "bm25",
                 "--method", "dense", "q"]) == 2
    err = capsys.readouterr().err
    assert "--method given 2 times" in err and "rag eval" in err
