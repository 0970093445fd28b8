"""Config validation: `llmlab pretrain --config` checks every field's type and range (and the
flags' ranges) against the dataclasses before any work starts, naming the file and the field;
SFT/preference data readers name the file and line of undecodable or over-nested input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmlab.cli import main


@pytest.fixture(autouse=True)
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """A config that slips through must fail the test, not start a (slow) run."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pretraining started")

    monkeypatch.setattr("llmlab.train.pretrain.run_pretrain", boom)


def _pretrain_err(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    rc = main(["pretrain", "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("error: "), err
    assert not (tmp_path / "run").exists()  # refused before any work
    return err


CASES = [
    ({"model": {"n_layer": -1}}, "model.n_layer: expected a positive int, got -1"),
    ({"model": {"n_head": 0}}, "model.n_head: expected a positive int, got 0"),
    ({"train": {"max_steps": "ten"}}, "train.max_steps: expected an int, got 'ten'"),
    ({"model": {"d_model": "big"}}, "model.d_model: expected an int, got 'big'"),
    ({"train": {"max_steps": True}}, "train.max_steps: expected an int, got True"),
    ({"train": {"max_steps": 2.5}}, "train.max_steps: expected an int, got 2.5"),
    ({"train": {"lr": -0.1}}, "train.lr: expected a positive number, got -0.1"),
    ({"train": {"lr": None}}, "train.lr: expected a number, got None"),
    ({"train": {"compile": "yes"}}, "train.compile: expected true or false, got 'yes'"),
    ({"train": {"schedule": "cosnie"}}, "train.schedule: expected one of cosine, linear, "
                                        "constant, wsd, got 'cosnie'"),
    ({"train": {"beta2": 1.0}}, "train.beta2: expected a number in [0, 1), got 1.0"),
    ({"data": {"val_fraction": 1.5}}, "data.val_fraction: expected a number in [0, 1), "
                                      "got 1.5"),
    ({"data": {"inputs": 3}}, "data.inputs: expected a string, got 3"),
    ({"model": {"n_kv_head": 0}}, "model.n_kv_head: expected a positive int or null, got 0"),
    ({"model": {"pos": "alibi"}}, "model.pos: expected one of learned, sinusoidal, rope, "
                                  "none, got 'alibi'"),
    ({"model": {"d_model": 100, "n_head": 3}}, "d_model=100 is not divisible by n_head=3"),
    ({"model": {"nlayer": 2}}, "unknown field(s) ['nlayer'] ('nlayer': did you mean "
                               "'n_layer'?)"),
    ({"model": [1, 2]}, "model: expected an object of fields, got a list"),
    ({"optim": {}}, "unknown section(s) ['optim']"),
]


@pytest.mark.parametrize("cfg,expect", CASES, ids=[str(c) for c, _ in CASES])
def test_bad_config_field_is_named_with_the_file_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], cfg: dict[str, Any],
        expect: str) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    err = _pretrain_err(tmp_path, capsys, "--config", str(path))
    assert str(path) in err and expect in err, err
    assert "Traceback" not in err


def test_config_that_is_not_a_json_object_names_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cfg.json"
    path.write_text('{"model": {"n_layer": 2},\n  oops}\n')
    err = _pretrain_err(tmp_path, capsys, "--config", str(path))
    assert f"{path}:2:" in err and "invalid JSON" in err, err
    path.write_text("[1]")
    assert f"{path}: expected a JSON object" in _pretrain_err(tmp_path, capsys, "--config",
                                                              str(path))
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert f"{path}: not UTF-8" in _pretrain_err(tmp_path, capsys, "--config", str(path))
    missing = tmp_path / "missing.json"
    assert str(missing) in _pretrain_err(tmp_path, capsys, "--config", str(missing))


def test_preset_in_the_config_file_is_used_or_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's saved config.json names its preset; given as --config it must not be ignored."""
    from llmlab.train.presets import PRESETS

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"preset": "nope"}))
    err = _pretrain_err(tmp_path, capsys, "--config", str(path))
    assert f"{path}: unknown preset 'nope'" in err and "tiny-cpu" in err
    path.write_text(json.dumps({"preset": 3}))
    assert f"{path}: preset: expected a string" in _pretrain_err(tmp_path, capsys, "--config",
                                                                 str(path))
    got: dict[str, Any] = {}
    monkeypatch.setattr("llmlab.train.pretrain.run_pretrain",
                        lambda model, tcfg, dcfg, out, preset: got.update(
                            tcfg=tcfg, preset=preset) or {"step": 0, "tokens": 0,
                                                          "val_loss": None})
    path.write_text(json.dumps({"preset": "gpt2-124m", "train": {"lr": 1e-3}}))
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--config", str(path),
                 "--no-progress"]) == 0
    assert got["preset"] == "gpt2-124m" and got["tcfg"].lr == 1e-3
    assert got["tcfg"].max_steps == PRESETS["gpt2-124m"]["train"]["max_steps"]
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--config", str(path),
                 "--preset", "tiny-cpu", "--no-progress"]) == 0  # the flag wins
    assert got["preset"] == "tiny-cpu"
    assert got["tcfg"].max_steps == PRESETS["tiny-cpu"]["train"]["max_steps"]


@pytest.mark.parametrize("flag,value,expect", [
    ("--n-head", "0", "--n-head: expected a positive int, got 0"),
    ("--lr", "-1", "--lr: expected a positive number, got -1.0"),
    ("--val-fraction", "1", "--val-fraction: expected a number in [0, 1), got 1.0"),
])
def test_out_of_range_flag_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    flag: str, value: str, expect: str) -> None:
    assert expect in _pretrain_err(tmp_path, capsys, flag, value)


def test_flag_and_file_values_combine_into_the_cross_field_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"model": {"d_model": 64}}))
    err = _pretrain_err(tmp_path, capsys, "--config", str(path), "--n-head", "3")
    assert "d_model=64 is not divisible by n_head=3" in err and str(path) in err


@pytest.mark.parametrize("cmd,flag,value,expect", [
    ("sft", "--lora-r", "0", "--lora-r: expected a positive int, got 0"),
    ("sft", "--max-steps", "0", "--max-steps: expected a positive int, got 0"),
    ("dpo", "--beta", "0", "--beta: expected a positive number, got 0.0"),
    ("grpo", "--temperature", "-1", "--temperature: expected a positive number, got -1.0"),
    ("ppo", "--gamma", "2", "--gamma: expected a number in [0, 1], got 2.0"),
])
def test_fine_tuning_flags_are_range_checked_before_loading_a_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        cmd: str, flag: str, value: str, expect: str) -> None:
    import llmlab

    def no_load(*a: Any, **k: Any) -> Any:
        raise AssertionError("model loaded")

    monkeypatch.setattr(llmlab, "load", no_load)
    rc = main([cmd, "--out", str(tmp_path / "run"), flag, value])
    err = capsys.readouterr().err
    assert rc != 0 and expect in err, err


# ----------------------------------------------------------------------------- data readers


def _sft_err(path: Path) -> str:
    from llmlab.train.sft_data import load_file

    with pytest.raises(ValueError) as e:
        load_file(path)
    return str(e.value)


def test_binary_data_file_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"messages": []}\n{"messages": []}\n\x89PNG\r\n\x1a\n\x00\xff')
    err = _sft_err(path)
    assert f"{path}:3: not UTF-8 text" in err and "(byte 34)" in err, err
    js = tmp_path / "data.json"
    js.write_bytes(b"\xff\xd8\xff\xe0")
    assert f"{js}:1: not UTF-8 text" in _sft_err(js)


def test_deeply_nested_line_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    ok = json.dumps({"messages": [{"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "yo"}]})
    path.write_text(ok + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    err = _sft_err(path)
    assert f"{path}:2: JSON nested too deeply" in err, err
    js = tmp_path / "data.json"
    js.write_text("[" * 100_000 + "]" * 100_000)
    assert f"{js}:1: JSON nested too deeply" in _sft_err(js)


def test_preference_and_prompt_readers_share_the_checked_reader(tmp_path: Path) -> None:
    from llmlab.align.data import load_prefs, load_prompts

    path = tmp_path / "prefs.jsonl"
    path.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n\xff\n')
    for load in (load_prefs, load_prompts):
        with pytest.raises(ValueError, match=rf"{path}:2: not UTF-8 text"):
            load(path)
    path.write_text("[" * 100_000 + "\n")
    for load in (load_prefs, load_prompts):
        with pytest.raises(ValueError, match=rf"{path}:1: JSON nested too deeply"):
            load(path)


def test_sft_cli_reports_a_binary_data_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\x00\x01\xff\xfe")

    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("model loaded")

    # The data is read before the model loads; if not, fail instead of loading SmolLM2.
    monkeypatch.setattr("llmlab.load", boom)
    rc = main(["sft", "--out", str(tmp_path / "run"), "--data", str(path), "--no-progress",
               "--no-tensorboard"])
    err = capsys.readouterr().err
    assert rc != 0 and f"{path}:1: not UTF-8 text" in err, err


@pytest.mark.parametrize("name", ["tiny-cpu", "micro", "gpt2-124m", "smollm2-135m"])
def test_every_preset_resolves_to_valid_configs(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each preset goes through the CLI's resolution and the run's own validation."""
    from types import SimpleNamespace

    from llmlab.train.presets import PRESETS
    from llmlab.train.pretrain import resolve_model

    assert name in PRESETS
    got: dict[str, Any] = {}
    monkeypatch.setattr("llmlab.train.pretrain.run_pretrain",
                        lambda model, tcfg, dcfg, out, preset: got.update(
                            model=model, tcfg=tcfg, dcfg=dcfg, preset=preset)
                        or {"step": 0, "tokens": 0, "val_loss": None})
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--preset", name,
                 "--no-progress"]) == 0
    assert got["preset"] == name
    got["tcfg"].validate()
    tok = SimpleNamespace(n_vocab=1024, bos_id=0, eos_id=1, name="bpe")
    mcfg = resolve_model(got["model"], tok, got["tcfg"])
    assert got["tcfg"].seq_len <= mcfg.max_seq_len
