"""CLI: bad input gives clear errors; a run's final/ loads everywhere; the report's numbers."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_common import TINY, cli, env, make_data, metrics


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
    e = _err("pretrain", "--out", str(tmp_path / "x"), "--nosuchfield", "3")
    assert "--nosuchfield" in e and "did you mean" not in e  # no far-fetched guess
    e = _err("data", "prepare", "--input", "kjv", str(tmp_path / "none"), "--tokenizer", "gpt2",
             "--out", str(tmp_path / "d"))
    assert "none': no such file" in e and "tokenizing" not in e  # refused before any work
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


def test_tokenizer_that_does_not_match_the_shards_is_refused(tmp_path, run):
    data = Path(json.loads((run / "config.json").read_text())["data"]["data"])
    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["tokenizer"]["n_vocab"] = 600
    (bad / "manifest.json").write_text(json.dumps(m))
    e = _err("pretrain", "--out", str(tmp_path / "x"), "--data", str(bad), *TINY)
    assert "tokenizer has 512 ids" in e and "made with 600" in e


def test_resume_from_incompatible_checkpoint_names_the_field(tmp_path, run):
    e = _err("pretrain", "--out", str(run), "--resume", "--d-model", "64")
    assert "cannot resume" in e and "model.d_model: checkpoint 32, this run 64" in e
    data = json.loads((run / "config.json").read_text())["data"]["data"]
    e = _err("pretrain", "--out", str(run), "--data", data, *TINY, "--max-steps", "1")
    assert "already has checkpoints (latest step 4)" in e and "--resume" in e


def test_run_dir_generates_and_exports_to_transformers(tmp_path, run):
    """`llmlab generate --model RUN_DIR` and `llmlab export-hf RUN_DIR OUT` take the run dir
    itself (its final/ model); the export gives transformers' logits."""
    import llmlab

    lm = llmlab.load(run)
    assert lm.kind == "causal-lm" and lm.cfg.vocab_size == 512
    want = lm.generate("And", max_new_tokens=6, temperature=0.0)
    r = subprocess.run([sys.executable, "-m", "llmlab.cli", "generate", "--model", str(run),
                        "--prompt", "And", "--max-new-tokens", "6", "--temperature", "0"],
                       env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == want and want
    r = subprocess.run([sys.executable, "-m", "llmlab.cli", "export-hf", str(run),
                        str(tmp_path / "hf")], env=env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
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


def test_prune_keeps_the_last_n_and_the_best(tmp_path):
    from llmlab.train import checkpoint as ckpt
    from llmlab.weights.rundir import best_checkpoint

    vals = {1: 3.0, 2: 2.0, 3: 2.5, 4: None, 5: 2.7}  # step 4 saved without an evaluation
    for step, v in vals.items():
        ckpt.save(ckpt.step_dir(tmp_path, step), {"step": step}, {"step": step, "val_loss": v},
                  lambda d: d.mkdir())
    ckpt.prune(tmp_path, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 4, 5]
    ckpt.prune(tmp_path, keep_last=1)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 5]
    assert best_checkpoint(tmp_path) == ckpt.step_dir(tmp_path, 2)


def test_run_without_final_loads_its_best_checkpoint(tmp_path, run):
    import llmlab
    from llmlab.weights.rundir import best_checkpoint, list_checkpoints, read_meta

    part = tmp_path / "stopped"
    shutil.copytree(run, part)
    shutil.rmtree(part / "final")
    found = list_checkpoints(part)
    assert [s for s, _ in found] == [2, 4]  # ckpt_every 2, keep_last 2
    best = best_checkpoint(part)
    assert best is not None
    assert read_meta(best)["val_loss"] == min(read_meta(p)["val_loss"] for _, p in found)
    lm = llmlab.load(part)
    ref = llmlab.load(best / "model")
    x = torch.randint(0, 512, (1, 8))
    with torch.no_grad():
        assert torch.equal(lm.model(x).logits, ref.model(x).logits)
    shutil.rmtree(part / "checkpoints")  # killed before its first checkpoint
    with pytest.raises(FileNotFoundError, match="no final/ model and no complete checkpoint"):
        llmlab.load(part)
