"""The shared loop: loss vs transformers, schedule vs its formula, NaN guard, exact resume
after SIGKILL, DDP and FSDP2 vs one process."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_common import TINY, cli, env, make_data

from llmlab.model import ModelConfig, Transformer
from llmlab.train import TrainConfig, Trainer, TrainingDiverged
from llmlab.train.distributed import Dist
from llmlab.train.optim import lr_lambda, param_groups
from llmlab.train.pretrain import next_token_loss


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))


def losses(run: Path) -> list[tuple]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["lr"], r["tokens"], r.get("val_loss")) for r in rows]


def test_next_token_loss_matches_transformers(tmp_path):
    from transformers import GPT2LMHeadModel

    from llmlab.weights.hf import save_hf

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, d_model=64, n_layer=2, n_head=4, max_seq_len=64)
    model = Transformer(cfg).eval()
    save_hf(model, tmp_path / "hf")
    ref = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, 300, (3, 33))
    with torch.no_grad():
        ours, _ = next_token_loss(model, {"input_ids": x[:, :-1], "labels": x[:, 1:]})
        theirs = ref(x, labels=x).loss  # transformers shifts the labels itself
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


def test_schedule_matches_closed_form():
    warm, total, lo = 10, 100, 0.1
    f = lr_lambda(warm, total, "cosine", lo)
    g = lr_lambda(warm, total, "linear", lo)
    for s in range(total + 5):
        if s < warm:
            want_c = want_l = (s + 1) / warm
        else:
            p = min(1.0, (s - warm) / (total - warm))
            want_c = lo + 0.5 * (1 - lo) * (1 + math.cos(math.pi * p))
            want_l = lo + (1 - lo) * (1 - p)
        assert f(s) == pytest.approx(want_c) and g(s) == pytest.approx(want_l)


def test_weight_decay_groups_cover_each_parameter_once():
    m = Transformer(ModelConfig(vocab_size=50, d_model=16, n_layer=1, n_head=2, max_seq_len=8))
    decay, no = param_groups(m, 0.1)
    ids = [id(p) for p in decay["params"] + no["params"]]
    assert len(ids) == len(set(ids)) == len({id(p) for p in m.parameters()})
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no["params"])


class _Toy:
    def __init__(self) -> None:
        self.n = 0

    def next_batch(self) -> dict:
        g = torch.Generator().manual_seed(self.n)
        self.n += 1
        x = torch.randint(0, 50, (2, 9), generator=g)
        return {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, s: dict) -> None:
        self.n = s["n"]


@pytest.mark.parametrize("nan_step", [3, 4])
def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path, nan_step):
    """Step 4 writes a checkpoint; a NaN at step 3 (no log there: the fused optimizer skips
    it on the device) is caught before that write, a NaN at step 4 before its own."""
    from llmlab.weights.io import load_safetensors
    from llmlab.weights.registry import save_checkpoint

    m = Transformer(ModelConfig(vocab_size=50, d_model=16, n_layer=1, n_head=2, max_seq_len=8))
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        loss, met = next_token_loss(model, batch)
        return (loss * math.nan if calls["n"] == nan_step else loss), met

    cfg = TrainConfig(max_steps=10, ckpt_every=2, eval_every=0, progress=False,
                      tensorboard=False, warmup_steps=1)
    t = Trainer(m, cfg, tmp_path, _Toy(), loss_fn, dist=Dist(),
                export=lambda mm, out: save_checkpoint(mm, out))
    assert t.skip_on_device  # fused AdamW on CPU too: the deferred check is what runs here
    with pytest.raises(TrainingDiverged, match=rf"step {nan_step}: loss nan.*step_0000002"):
        t.fit()
    if nan_step == 3:  # the NaN step's update was skipped: only step 4's was applied
        assert all(torch.isfinite(p).all() for p in m.parameters())
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_0000002"]
    sd = load_safetensors(tmp_path / "checkpoints/step_0000002/model/model.safetensors")
    assert all(torch.isfinite(v).all() for v in sd.values())


def test_metrics_jsonl_and_tensorboard_hold_the_same_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from llmlab.weights.registry import save_checkpoint

    m = Transformer(ModelConfig(vocab_size=50, d_model=16, n_layer=1, n_head=2, max_seq_len=8))
    cfg = TrainConfig(max_steps=6, ckpt_every=0, eval_every=3, log_every=2, progress=False,
                      warmup_steps=1)
    evals = [_Toy().next_batch()]
    Trainer(m, cfg, tmp_path, _Toy(), next_token_loss, dist=Dist(), eval_data=evals,
            export=lambda mm, out: save_checkpoint(mm, out)).fit()
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 6]  # first, every 2nd, evaluations
    assert all({"step", "loss", "lr", "tokens", "tok_per_s"} <= set(r) for r in rows)
    assert [r["step"] for r in rows if "val_loss" in r] == [3, 6]
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    for key in ("loss", "lr", "val_loss"):
        got = [(e.step, e.value) for e in ea.Scalars(key)]
        want = [(r["step"], r[key]) for r in rows if key in r]
        assert [s for s, _ in got] == [s for s, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)


def test_sigkill_then_resume_is_bitwise_identical(data_dir, tmp_path):
    args = [*TINY, "--data", str(data_dir), "--max-steps", "300", "--ckpt-every", "20",
            "--eval-every", "50", "--dropout", "0.1", "--keep-last", "2"]
    cli("pretrain", "--out", str(tmp_path / "ref"), *args)
    run = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "llmlab.train.cli", "pretrain", "--out",
                          str(run), *args], env=env(), stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step_0000040").exists() and p.poll() is None:
        assert time.time() < deadline
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    partial = losses(run)
    assert partial[-1][0] < 300, "the run ended before it could be killed"
    cli("pretrain", "--out", str(run), "--resume", "--no-progress")
    assert losses(run) == losses(tmp_path / "ref")  # exact float equality, every step
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept[-2:] == ["step_0000280", "step_0000300"] and len(kept) <= 3  # last 2 + best


def _torchrun(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", "-m", "llmlab.train.cli", *args], env=env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_with_accumulation(data_dir, tmp_path, mode):
    args = [*TINY, "--data", str(data_dir), "--max-steps", "6", "--eval-every", "3",
            "--ckpt-every", "0", "--sample-tokens", "0"]
    cli("pretrain", "--out", str(tmp_path / "one"), "--grad-accum", "2", *args)
    extra = ["--fsdp"] if mode == "fsdp" else []
    _torchrun("pretrain", "--out", str(tmp_path / "two"), "--grad-accum", "1", *extra, *args)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [r[0] for r in one] == [r[0] for r in two] and [r[3] for r in one] == [
        r[3] for r in two]
    for a, b in zip(one, two, strict=True):
        assert a[1] == pytest.approx(b[1], abs=1e-5)
        if a[4] is not None:
            assert a[4] == pytest.approx(b[4], abs=1e-5)
    from llmlab.weights.io import load_safetensors

    wa = load_safetensors(tmp_path / "one/final/model.safetensors")
    wb = load_safetensors(tmp_path / "two/final/model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_checkpointed_blocks_give_the_same_loss_and_gradients():
    """--checkpoint-activations runs each block again in backward instead of keeping its
    activations: the RL log-probs and every gradient equal the plain forward's bit for bit,
    with dropout (its RNG state is replayed), GQA, RoPE and left padding."""
    from llmlab.model.config import PRESETS
    from llmlab.model.transformer import checkpoint_blocks

    cfg = ModelConfig(**{**PRESETS["llama"], "vocab_size": 300, "d_model": 64, "n_layer": 3,
                         "n_head": 4, "n_kv_head": 2, "max_seq_len": 64, "dropout": 0.1})
    torch.manual_seed(0)
    model = Transformer(cfg).train()
    x = torch.randint(0, 300, (3, 17))
    attn = torch.ones_like(x)
    attn[0, :5] = 0

    def run(on: bool) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        checkpoint_blocks(model, on)
        model.zero_grad()
        torch.manual_seed(1)
        saved = [0]  # bytes autograd keeps for backward during the forward

        def keep(t: torch.Tensor) -> torch.Tensor:
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            logp = -model(x, targets=x, reduction="none", attention_mask=attn,
                          temperature=0.7).loss
        (logp * attn).sum().backward()
        return logp.detach(), [p.grad.clone() for p in model.parameters()], saved[0]

    plain, ckpt = run(False), run(True)
    assert torch.equal(plain[0], ckpt[0])
    assert all(torch.equal(a, b) for a, b in zip(plain[1], ckpt[1], strict=True))
    assert ckpt[2] < plain[2] / 2, (ckpt[2], plain[2])  # the point: far less is kept
