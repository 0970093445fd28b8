"""The depth dial: one number derives the model's shape and learning rate (nanochat's
rule), explicit flags win, and a run at a given depth trains with that shape."""

from __future__ import annotations

import json

import pytest
from train_common import cli

from llmlab.cli import build_parser
from llmlab.model import ModelConfig
from llmlab.train.cli import resolve
from llmlab.train.depth import ASPECT, HEAD_DIM, from_depth, plan
from llmlab.train.presets import PRESETS


def _resolve(*args: str) -> tuple[dict, object]:
    model, tcfg, _, _ = resolve(build_parser().parse_args(["pretrain", *args, "--out", "/x"]))
    return model, tcfg


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 6, 12])
def test_depth_derives_shape_and_lr(depth):
    micro = PRESETS["micro"]
    model, tcfg = _resolve("--preset", "micro", "--depth", str(depth))
    d = depth * ASPECT
    assert (model["n_layer"], model["d_model"]) == (depth, d)
    assert model["n_head"] == d // HEAD_DIM and model["n_kv_head"] is None  # 32-wide heads
    # SwiGLU's 8/3 d_model, rounded up to 32; nanochat's (d / d_ref) ** -0.5 lr scaling
    assert model["d_ff"] % 32 == 0 and 0 <= model["d_ff"] - 8 * d / 3 < 32
    lr = micro["train"]["lr"] * (micro["model"]["d_model"] / d) ** 0.5
    assert tcfg.lr == pytest.approx(lr)
    cfg = ModelConfig(**{**model, "vocab_size": 1024})
    assert cfg.head_dim == HEAD_DIM and cfg.num_params() == plan("micro", depth)["n_params"]


def test_depth_three_is_the_micro_presets_width():
    model, tcfg = _resolve("--preset", "micro", "--depth", "3")
    micro = PRESETS["micro"]
    for k in ("n_layer", "d_model", "d_ff"):
        assert model[k] == micro["model"][k]
    assert tcfg.lr == micro["train"]["lr"]


def test_explicit_flags_win_and_derived_values_follow_them():
    model, tcfg = _resolve("--preset", "micro", "--depth", "4", "--n-head", "2", "--lr",
                           "1e-3", "--d-ff", "100")
    assert (model["n_layer"], model["d_model"], model["n_head"], model["d_ff"]) == \
        (4, 128, 2, 100)
    assert tcfg.lr == 1e-3
    # an explicit width: heads, d_ff and lr come from it, not from depth * ASPECT
    model, tcfg = _resolve("--preset", "micro", "--depth", "2", "--d-model", "192")
    assert (model["n_layer"], model["d_model"], model["n_head"], model["d_ff"]) == \
        (2, 192, 6, 512)
    assert tcfg.lr == pytest.approx(PRESETS["micro"]["train"]["lr"] * (96 / 192) ** 0.5)
    # not given: the preset's own shape
    model, tcfg = _resolve("--preset", "micro")
    assert model["n_head"] == PRESETS["micro"]["model"]["n_head"]


def test_bad_depth_names_the_flag():
    with pytest.raises(ValueError, match="--depth: expected a positive int, got 0"):
        _resolve("--preset", "micro", "--depth", "0")
    with pytest.raises(ValueError, match="--depth"):
        from_depth(True, PRESETS["micro"])  # type: ignore[arg-type]


def test_plan_schedule_is_the_trainers(tmp_path):
    out = tmp_path / "run"
    cli("pretrain", "--preset", "micro", "--depth", "2", "--max-steps", "2", "--out",
        str(out), "--inputs", "kjv", "--tokenizer", "bpe:300", "--log-every", "1",
        "--eval-every", "2", "--eval-batches", "1", "--sample-tokens", "4", "--batch-size",
        "2", "--seq-len", "16", "--threads", "1", "--no-progress")
    saved = json.loads((out / "config.json").read_text())
    assert (saved["model"]["n_layer"], saved["model"]["d_model"], saved["model"]["n_head"]) \
        == (2, 64, 2)
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    p = plan("micro", 2, "bpe:300", 2)
    sched = {s: lr for s, lr in p["schedule"]}
    assert [r["step"] for r in rows] == [1, 2]
    assert [r["lr"] for r in rows] == pytest.approx([sched[1], sched[2]])  # what it logged
    assert saved["train"]["lr"] == pytest.approx(p["lr"])
    assert (out / "final").is_dir()
    assert json.loads((out / "samples.jsonl").read_text().splitlines()[0])["step"] == 0
