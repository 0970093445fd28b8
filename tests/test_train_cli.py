"""CLI: bad input gives clear errors; a run's final/ loads everywhere; the report's numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from train_common import TINY, cli, make_data, metrics


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("run")
    data = make_data(d)
    cli("pretrain", "--out", str(d / "run"), "--data", str(data), *TINY, "--max-steps", "4",
        "--eval-every", "2", "--ckpt-every", "2")
    return d / "run"


def _err(*args: str) -> str:
    r = cli(*args, check=False)
    assert r.returncode != 0 and "error:" in r.stderr, r.stderr
    return r.stderr


def test_unknown_preset_flag_and_config_field_list_valid_ones(tmp_path, run):
    e = _err("pretrain", "--out", str(tmp_path / "x"), "--preset", "nope")
    assert "unknown preset 'nope'" in e and "tiny-cpu" in e and "gpt2-124m" in e
    e = _err("pretrain", "--out", str(tmp_path / "x"), "--max-step", "3")
    assert "--max-step" in e and "did you mean: --max-step -> --max-steps" in e
    assert "--grad-accum" in e  # the list of valid options
    (tmp_path / "c.json").write_text(json.dumps({"train": {"learning_rate": 1}}))
    e = _err("pretrain", "--out", str(tmp_path / "x"), "--config", str(tmp_path / "c.json"))
    assert "unknown field(s) ['learning_rate']" in e and "valid:" in e and "lr" in e


def test_vocab_mismatch_missing_data_and_oversized_batch(tmp_path, run):
    data = json.loads((run / "config.json").read_text())["data"]["data"]
    e = _err("pretrain", "--out", str(tmp_path / "x"), "--data", data, *TINY,
             "--vocab-size", "100")
    assert "vocab_size=100" in e and "512" in e
    e = _err("pretrain", "--out", str(tmp_path / "x"), "--data", str(tmp_path / "none"))
    assert "manifest.json" in e
    e = _err("pretrain", "--out", str(tmp_path / "x"), "--data", data, *TINY,
             "--batch-size", "10000000")
    assert "batch_size=10000000" in e and "GiB is free" in e and "needs about" in e


def test_resume_from_incompatible_checkpoint_names_the_field(tmp_path, run):
    e = _err("pretrain", "--out", str(run), "--resume", "--d-model", "64")
    assert "cannot resume" in e and "model.d_model: checkpoint 32, this run 64" in e
    data = json.loads((run / "config.json").read_text())["data"]["data"]
    e = _err("pretrain", "--out", str(run), "--data", data, *TINY, "--max-steps", "1")
    assert "already has checkpoints (latest step 4)" in e and "--resume" in e


def test_final_loads_generates_and_exports_to_transformers(tmp_path, run):
    import llmlab
    from llmlab.cli import main as llmlab_main

    lm = llmlab.load(run / "final")
    assert lm.kind == "causal-lm" and lm.cfg.vocab_size == 512
    assert isinstance(lm.generate("And", max_new_tokens=4, seed=0), str)
    assert llmlab_main(["export-hf", str(run / "final"), str(tmp_path / "hf")]) == 0
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x).logits, ref(x).logits, atol=1e-4, rtol=1e-4)


def test_report_summary_and_plot(run):
    s = json.loads(cli("report", str(run), "--json", "--peak-flops", "1e12").stdout)
    rows = metrics(run)
    val = [m["val_loss"] for m in rows if "val_loss" in m]
    assert s["final_val_loss"] == val[-1]
    assert s["final_val_ppl"] == pytest.approx(math.exp(val[-1]))
    assert s["tokens"] == 4 * 4 * 32  # steps x batch x seq_len
    n = json.loads((run / "run.json").read_text())["n_params"]
    assert n == sum(p.numel() for p in llmlab_load(run).model.parameters())
    rates = sorted(m["tok_per_s"] for m in rows[1:])
    assert s["mfu"] == pytest.approx(6 * n * rates[len(rates) // 2] / 1e12)
    assert Path(s["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def llmlab_load(run: Path):
    import llmlab

    return llmlab.load(run / "final")
