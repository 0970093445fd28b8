"""The speedrun switches: Muon against an SVD and torch's AdamW, the wsd schedule against
transformers', stopping at a target val bpb, and exact resume under Muon."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from train_common import TINY, cli, make_data

from llmlab.train.muon import CUBIC, Muon, muon_groups, newton_schulz
from llmlab.train.optim import lr_lambda


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (32, 32)])
def test_newton_schulz_against_svd(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    # The cubic iteration converges to U Vᵀ itself.
    assert torch.allclose(newton_schulz(g, steps=60, coeffs=CUBIC), u @ vh, atol=1e-6)
    # Muon's 5-step quintic keeps the singular vectors and only pulls the values near 1.
    x = newton_schulz(g)
    core = u.mT @ x @ vh.mT  # diagonal when x = U diag(s') Vᵀ
    off = core - torch.diag_embed(core.diagonal())
    assert off.abs().max() < 1e-6
    assert core.diagonal().min() > 0.6 and core.diagonal().max() < 1.25


def _tiny_model(tie: bool = True) -> torch.nn.Module:
    from llmlab.model import ModelConfig, Transformer

    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=64, d_model=16, n_layer=2, n_head=2,
                                   max_seq_len=16, pos="rope", norm="rmsnorm", mlp="swiglu",
                                   d_ff=32, bias=False, tie_embeddings=tie))


def test_muon_groups_and_its_adamw_match_torch():
    model = _tiny_model(tie=False)
    groups = muon_groups(model, lr=1e-2, muon_lr=0.02, weight_decay=0.1, embed_lr=0.05)
    hidden, embed, head, flat = (g["params"] for g in groups)
    emb = model.model.embed_tokens.weight
    assert embed == [emb] and groups[1]["lr"] == 0.05
    assert head == [model.lm_head.weight] and groups[2]["lr"] == 1e-2
    assert all(p.dim() == 2 for p in hidden) and all(p.dim() == 1 for p in flat)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted({id(p) for p in model.parameters()})  # each once
    # The AdamW groups step exactly as torch.optim.AdamW (the reference) does.
    twin = _tiny_model(tie=False)
    ours = Muon(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    tw = muon_groups(twin, lr=1e-2, muon_lr=0.02, weight_decay=0.1, embed_lr=0.05)
    ref = torch.optim.AdamW(tw[1:], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    x = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        for m, opt in ((model, ours), (twin, ref)):
            opt.zero_grad()
            m(x[:, :-1], targets=x[:, 1:]).loss.backward()
            opt.step()
        with torch.no_grad():  # the reference skips the hidden matrices: give it Muon's
            for a, b in zip(groups[0]["params"], tw[0]["params"], strict=True):
                b.copy_(a)
    for a, b in zip(embed + head + flat, [p for g in tw[1:] for p in g["params"]], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_embed_lr_needs_untied_embeddings_and_muon():
    from llmlab.train.config import TrainConfig
    from llmlab.train.optim import make_optimizer

    tied = _tiny_model()  # the tied matrix is the head too: it keeps `lr`
    assert [p for p in muon_groups(tied, 1e-2, 0.02, 0.1)[2]["params"]] == [
        tied.model.embed_tokens.weight]
    with pytest.raises(ValueError, match="embed_lr: the token embedding is tied"):
        muon_groups(tied, 1e-2, 0.02, 0.1, embed_lr=0.05)
    with pytest.raises(ValueError, match="embed_lr: only optimizer=muon"):
        make_optimizer(_tiny_model(tie=False), TrainConfig(embed_lr=0.05), torch.device("cpu"),
                       None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_newton_schulz_on_a_stack_against_svd(dtype):
    """Muon orthogonalises same-shape matrices as one stack, in bf16 when training in bf16:
    each matrix of the stack still gets its own U Vᵀ (up to the quintic's spread)."""
    g = torch.randn(3, 24, 40, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = newton_schulz(g, dtype=dtype).double()
    assert x.dtype == torch.float64 and x.shape == g.shape
    tol = 1e-5 if dtype == torch.float32 else 0.05  # bf16 keeps ~3 significant digits
    for gi, xi in zip(g, x, strict=True):
        u, _, vh = torch.linalg.svd(gi, full_matrices=False)
        core = u.mT @ xi @ vh.mT
        assert (core - torch.diag_embed(core.diagonal())).abs().max() < tol
        assert core.diagonal().min() > 0.6 and core.diagonal().max() < 1.25


def test_muon_step_by_hand():
    gen = torch.Generator().manual_seed(2)
    ws = [torch.nn.Parameter(torch.randn(*s, generator=gen)) for s in ((8, 4), (8, 4), (4, 6))]
    gs = [torch.randn(w.shape, generator=gen) for w in ws]
    opt = Muon([{"params": ws, "muon": True}], lr=0.1, momentum=0.9)
    w0 = [w.detach().clone() for w in ws]
    for w, g in zip(ws, gs, strict=True):
        w.grad = g.clone()
    opt.step()
    # Step 1: buffer = g; Nesterov update g + 0.9 g; a tall 8x4 is scaled by sqrt(8/4). The
    # two 8x4 matrices go through Newton-Schulz as one stack, the 4x6 alone.
    for w, g, w_0 in zip(ws, gs, w0, strict=True):
        scale = math.sqrt(2) if w.shape == (8, 4) else 1.0
        want = w_0 - 0.1 * scale * newton_schulz(g + 0.9 * g)
        torch.testing.assert_close(w.detach(), want)


def test_bf16_attention_on_cpu_runs_fp32_sdpa():
    """Under bf16 autocast on a CPU, attention's core is torch's SDPA on the bf16 q, k, v
    upcast to fp32 (the reference below), and gradients reach the inputs."""
    import torch.nn.functional as F

    from llmlab.model.layers import sdpa

    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=gen).bfloat16().requires_grad_()
               for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sdpa(q, k, v, None, True, 0.0, False)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, ref.bfloat16(), rtol=0, atol=0)
    y.float().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, k, v))


def test_wsd_matches_transformers():
    from transformers import get_wsd_schedule

    total, warmup, cooldown, floor = 100, 10, 0.3, 0.1
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = get_wsd_schedule(opt, num_warmup_steps=warmup, num_decay_steps=30,
                           num_training_steps=total, decay_type="linear", min_lr_ratio=floor)
    ref_f = ref.lr_lambdas[0]
    ours = lr_lambda(warmup, total, "wsd", floor, cooldown)
    # transformers' warmup starts at 0 and ours at 1/warmup; after it they agree.
    assert [ours(s) for s in range(warmup, total + 1)] == pytest.approx(
        [ref_f(s) for s in range(warmup, total + 1)], abs=1e-12)


def test_target_val_bpb_stops_the_run_and_records_it(data_dir, tmp_path):
    from llmlab.tokenizer import load_tokenizer
    from llmlab.train.data import TokenShards, eval_batches

    run = tmp_path / "run"
    cli("pretrain", "--out", str(run), *TINY, "--data", str(data_dir), "--max-steps", "200",
        "--eval-every", "4", "--target-val-bpb", "4.5", "--optimizer", "muon",
        "--sample-tokens", "0")
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_loss" in r]
    hit = [r for r in evals if r.get("target_reached")]
    assert len(hit) == 1 and hit[0] is evals[-1] and hit[0]["step"] < 200
    assert all(r["val_bpb"] > 4.5 for r in evals[:-1]) and hit[0]["val_bpb"] <= 4.5
    assert hit[0]["time_to_target_s"] > 0 and hit[0]["tokens_to_target"] == hit[0]["tokens"]
    assert (run / "final").is_dir()
    # bits per byte by hand: the evaluated targets decoded to text, specials excluded.
    tok = load_tokenizer(data_dir / "tokenizer")
    special = set(tok.special_tokens.values())
    batches = eval_batches(TokenShards(data_dir, "val"), 32, 4, 2)
    labels = [t for b in batches for t in b["labels"].flatten().tolist()]
    n_bytes = sum(len(tok.decode_bytes([t])) for t in labels if t not in special)
    want = hit[0]["val_loss"] * len(labels) / math.log(2) / n_bytes
    assert hit[0]["val_bpb"] == pytest.approx(want, rel=1e-9)


def test_target_needs_validation(data_dir, tmp_path):
    r = cli("pretrain", "--out", str(tmp_path / "r"), *TINY, "--data", str(data_dir),
            "--max-steps", "3", "--eval-every", "0", "--target-val-bpb", "3", check=False)
    assert r.returncode != 0 and "target_val_bpb" in r.stderr


@pytest.mark.parametrize("recipe", [
    ["--optimizer", "muon", "--schedule", "wsd"],
    # the speedrun-cpu preset's own switches (bf16, untied embedding at its own lr, a value
    # embedding, Muon on stacks) on the tiny shape
    ["--preset", "speedrun-cpu", "--d-ff", "64"],
], ids=["muon-wsd", "speedrun-cpu"])
def test_muon_resume_is_bitwise_identical(data_dir, tmp_path, recipe):
    """A run resumed from its step-20 checkpoint (Muon's momentum, the wsd schedule and the
    data order restored) writes exactly the records of the run that never stopped."""
    import shutil

    args = [*TINY, "--data", str(data_dir), "--max-steps", "40", "--ckpt-every", "20",
            "--eval-every", "20", "--sample-tokens", "0", *recipe]
    cli("pretrain", "--out", str(tmp_path / "ref"), *args)
    run = tmp_path / "cut"
    shutil.copytree(tmp_path / "ref", run)
    shutil.rmtree(run / "checkpoints" / "step_0000040")  # as if it died after step 20
    shutil.rmtree(run / "final")

    def rows(r: Path) -> list[tuple]:
        return [(x["step"], x["loss"], x["lr"], x.get("val_loss"))
                for x in map(json.loads, (r / "metrics.jsonl").read_text().splitlines())]

    cli("pretrain", "--out", str(run), "--resume", "--no-progress")
    assert rows(run) == rows(tmp_path / "ref") and rows(run)[-1][0] == 40



def _cfg(**kw):  # noqa: ANN003, ANN202
    from llmlab.model import ModelConfig

    base = dict(vocab_size=64, d_model=16, n_layer=2, n_head=2, max_seq_len=16, pos="none",
                norm="rmsnorm", mlp="swiglu", d_ff=32, bias=False, tie_embeddings=True)
    return ModelConfig(**{**base, **kw})


def test_qk_norm_attention_by_hand():
    from llmlab.model.layers import Attention

    torch.manual_seed(0)
    att = Attention(_cfg(qk_norm=True), 0)
    x = torch.randn(2, 5, 16)
    b, t, h, hd = 2, 5, 2, 8

    def heads(z: torch.Tensor) -> torch.Tensor:
        return z.view(b, t, h, hd).transpose(1, 2)

    def rms(z: torch.Tensor) -> torch.Tensor:  # F.rms_norm's default eps is the dtype's
        return z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + torch.finfo(z.dtype).eps)

    q, k, v = rms(heads(att.q_proj(x))), rms(heads(att.k_proj(x))), heads(att.v_proj(x))
    s = q @ k.mT / math.sqrt(hd)
    s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    want = att.o_proj((s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, h * hd))
    torch.testing.assert_close(att(x, None, True), want, rtol=1e-5, atol=1e-6)


def test_relu2_mlp_and_softcap_by_hand():
    from llmlab.model import Transformer
    from llmlab.model.layers import MLP
    from llmlab.weights.hf import NoHFEquivalent, hf_family

    torch.manual_seed(0)
    mlp = MLP(_cfg(mlp="relu2"))
    x = torch.randn(3, 16)
    torch.testing.assert_close(mlp(x), mlp.down_proj(torch.relu(mlp.up_proj(x)) ** 2))
    capped, plain = Transformer(_cfg(logit_softcap=2.0)), Transformer(_cfg())
    plain.load_state_dict(capped.state_dict())
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(4))
    z = plain(ids[:, :-1]).logits
    torch.testing.assert_close(capped(ids[:, :-1]).logits, 2.0 * torch.tanh(z / 2.0))
    want = torch.nn.functional.cross_entropy((2.0 * torch.tanh(z / 2.0)).flatten(0, 1),
                                             ids[:, 1:].flatten())
    torch.testing.assert_close(capped(ids[:, :-1], targets=ids[:, 1:]).loss, want)
    for cfg in (_cfg(qk_norm=True, pos="rope"), _cfg(mlp="relu2", pos="rope"),
                _cfg(logit_softcap=15.0, pos="rope")):
        with pytest.raises(NoHFEquivalent, match="no transformers architecture"):
            hf_family(cfg)
    assert hf_family(_cfg(pos="rope")) == "llama"
