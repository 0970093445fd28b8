"""The rest of the speedrun switches: value embeddings against attention written out by hand,
the sequence-length warmup's batches against the windows cut by hand and its exact resume,
and the refusals (export-hf, the fast decoders, bad flag values)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from train_common import TINY, cli, make_data, metrics

from llmlab.model import ModelConfig, Transformer


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))


def _cfg(**kw) -> ModelConfig:  # noqa: ANN003
    base = dict(vocab_size=64, d_model=16, n_layer=4, n_head=2, n_kv_head=1, max_seq_len=16,
                pos="rope", norm="rmsnorm", mlp="swiglu", d_ff=32, bias=False,
                tie_embeddings=True)
    return ModelConfig(**{**base, **kw})


def _model(**kw) -> Transformer:  # noqa: ANN003
    torch.manual_seed(0)
    m = Transformer(_cfg(**kw)).eval()
    with torch.no_grad():  # mixing weights away from their 1/2, 1/2 start
        for i, layer in enumerate(m.model.layers):
            if hasattr(layer.self_attn, "value_lambdas"):
                layer.self_attn.value_lambdas.copy_(torch.tensor([0.3 + i, 1.7 - 0.5 * i]))
    return m


def test_value_embedding_attention_by_hand():
    """One layer: v = a v_proj(x) + b E[ids], then causal GQA attention, written out."""
    m = _model(value_embeds=1, pos="none")
    att, table = m.model.layers[0].self_attn, m.model.value_embeds[0].weight
    b, t, h, hd = 2, 6, 2, 8
    x = torch.randn(b, t, 16, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(0, 64, (b, t), generator=torch.Generator().manual_seed(2))
    lam = att.value_lambdas.detach()
    q = att.q_proj(x).view(b, t, h, hd).transpose(1, 2)
    k = att.k_proj(x).view(b, t, 1, hd).transpose(1, 2).expand(b, h, t, hd)
    v = lam[0] * att.v_proj(x) + lam[1] * table[ids]  # (b, t, 1 * hd)
    v = v.view(b, t, 1, hd).transpose(1, 2).expand(b, h, t, hd)
    s = (q @ k.mT / math.sqrt(hd)).masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1),
                                               float("-inf"))
    want = att.o_proj((s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, h * hd))
    with torch.no_grad():
        got = att(x, None, True, ve=m.model.value_embeds[0](ids))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        # Without a value embedding the layer is plain attention: b's term is the difference.
        plain = att(x, None, True)
    assert (got - plain).abs().max() > 1e-3


@pytest.mark.parametrize("n", [1, 2, 4])
def test_value_embedding_tables_feed_the_first_and_last_layers(n):
    """The whole model against its blocks run by hand, each given E_j[ids] of the table the
    U-net pattern names: modded-nanogpt's [ve0, ve1, ve2, None, ..., None, ve0, ve1, ve2]."""
    m = _model(value_embeds=n)
    n_layer = 4
    pattern = [*range(n), *[None] * (n_layer - 2 * n), *range(n)] if 2 * n <= n_layer \
        else list(range(n_layer))
    assert [m.cfg.value_table(i) for i in range(n_layer)] == pattern
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))
    st = m.model
    with torch.no_grad():
        x = st.embed_tokens(ids)
        rope = st.rope(torch.arange(9)[None], x.dtype)
        for layer, j in zip(st.layers, pattern, strict=True):
            ve = None if j is None else st.value_embeds[j].weight[ids]
            x = layer(x, None, True, rope, None, ve=ve)
        want = m.lm_head(st.norm(x))
        torch.testing.assert_close(m(ids).logits, want, rtol=1e-5, atol=1e-6)
    # num_params counts the tables and the (a, b) pairs from the shapes alone.
    assert m.cfg.num_params() == m.num_params() == Transformer(_cfg()).num_params() \
        + n * 64 * 8 + 2 * sum(j is not None for j in pattern)


def test_value_embeddings_decode_through_the_cache():
    """Prefill then one token at a time gives the full forward's logits: the mixed values
    are what the cache keeps."""
    from llmlab.model.cache import KVCache

    m = _model(value_embeds=2)
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(4))
    cache = KVCache(m.cfg, 2, 16)
    with torch.no_grad():
        steps = [m(ids[:, :6], cache=cache).logits]
        steps += [m(ids[:, i : i + 1], cache=cache).logits for i in range(6, 10)]
        torch.testing.assert_close(torch.cat(steps, 1), m(ids).logits, rtol=1e-5, atol=1e-5)


def test_patching_runs_the_stack_on_with_the_value_embeddings():
    """Activation patching's shortcut (run the blocks on from a layer's input) gives the
    model's own last logits, soft-capped, when the value embeddings read the same tokens."""
    from llmlab.explain.patching import run_from

    m = _model(value_embeds=1, logit_softcap=3.0)
    ids = torch.randint(0, 64, (1, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = run_from(m, 0, m.model.embed_tokens(ids), ids)
        torch.testing.assert_close(got, m(ids).logits[:, -1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="token ids"):
        run_from(m, 0, m.model.embed_tokens(ids))


def test_value_embeddings_go_to_adamw_under_muon():
    """The tables are looked up, not multiplied: AdamW (at embed_lr) with the token
    embedding, as in modded-nanogpt; the (a, b) pairs with the undecayed gains."""
    from llmlab.train.muon import muon_groups

    m = _model(value_embeds=2)
    hidden, embed, _head, flat = (g["params"] for g in muon_groups(m, 1e-3, 0.02, 0.1))
    tables = [e.weight for e in m.model.value_embeds]
    lambdas = [b.self_attn.value_lambdas for b in m.model.layers]
    assert all(any(p is t for p in embed) for t in tables)
    assert all(any(p is la for p in flat) for la in lambdas)
    assert not any(p is t for p in hidden for t in tables)


def test_a_checkpoint_older_than_the_switches_resumes_with_them_off(tmp_path):
    """A run saved before value_embeds (and qk_norm, ...) existed has no such fields in its
    compat record: resuming it with them off is the same model; with one on, it is refused."""
    from llmlab.train.checkpoint import check_compatible

    now = _cfg().to_dict()
    old = {k: v for k, v in now.items() if k not in ("value_embeds", "qk_norm", "logit_softcap")}
    check_compatible({"model": old}, {"model": now}, tmp_path)
    with pytest.raises(ValueError, match="model.value_embeds: checkpoint None, this run 2"):
        check_compatible({"model": old}, {"model": {**now, "value_embeds": 2}}, tmp_path)
    with pytest.raises(ValueError, match="model.value_embeds: checkpoint 2, this run 0"):
        check_compatible({"model": {**now, "value_embeds": 2}}, {"model": now}, tmp_path)


@pytest.mark.parametrize("switch", [dict(value_embeds=1), dict(qk_norm=True),
                                    dict(mlp="relu2"), dict(logit_softcap=15.0)])
def test_export_hf_refuses_a_checkpoint_with_a_switch(tmp_path, switch):
    """A Llama config would load these weights and compute a different model: refused, with
    the switch named, and nothing written."""
    from inproc import llmlab

    from llmlab.weights.registry import save_checkpoint

    save_checkpoint(Transformer(_cfg(**switch)), tmp_path / "ck")
    r = llmlab("export-hf", str(tmp_path / "ck"), str(tmp_path / "hf"))
    name = next(iter(switch)) if "mlp" not in switch else "mlp=relu2"
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert name in r.stderr and "no transformers architecture" in r.stderr, r.stderr
    assert not (tmp_path / "hf").exists()


def test_fast_decoders_decline_value_embeddings():
    from llmlab.generate.fast.cpu import lean_supported
    from llmlab.generate.fast.triton_decode import supports
    from llmlab.model.quant import quantize_int8_

    assert supports(_model()) is None  # the Triton decoder's check, torch-only
    assert "value embeddings" in (supports(_model(value_embeds=1)) or "")
    assert lean_supported(quantize_int8_(_model()))
    assert not lean_supported(quantize_int8_(_model(value_embeds=1)))


def test_value_embedding_model_trains_through_pretrain(data_dir, tmp_path):
    run = tmp_path / "ve"
    cli("pretrain", "--out", str(run), *TINY, "--data", str(data_dir), "--max-steps", "30",
        "--value-embeds", "1", "--optimizer", "muon", "--eval-every", "0",
        "--sample-tokens", "0")
    rows = metrics(run)
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-5:]) / 5
    assert last < first - 0.5, (first, last)  # ln 512 = 6.24 at the start
    saved = json.loads((run / "final" / "llmlab.json").read_text())
    assert saved["value_embeds"] == 1  # the checkpoint records the switch
    r = cli("generate", "--model", str(run / "final"), "--prompt", "And", "--max-new-tokens",
            "4", "--temperature", "0")
    assert r.returncode == 0


# ----------------------------------------------------------------------------- seq_len warmup


def test_seq_len_warmup_batches_are_the_windows_cropped_by_hand(data_dir):
    from llmlab.train.data import PretrainBatches, TokenShards
    from llmlab.train.seqlen import SeqLenWarmup

    shards = TokenShards(data_dir, "train")
    # start 8, seq_len 32, 12 steps: 8 + 24 s / 12 = 8 + 2s tokens at step s, rounded down
    # to a multiple of 8: steps 0-3 give 8, 4-7 give 16, 8-11 give 24, then 32.
    want = [8] * 4 + [16] * 4 + [24] * 4 + [32] * 3
    ref = PretrainBatches(shards, 32, 4, seed=3)
    src = SeqLenWarmup(PretrainBatches(shards, 32, 4, seed=3), grad_accum=2, start=8,
                       warmup=12)
    for t in want:
        for _ in range(2):  # both micro-batches of a step have its length
            full, got = ref.next_batch(), src.next_batch()
            assert got["input_ids"].shape == got["labels"].shape == (4, t)
            assert torch.equal(got["input_ids"], full["input_ids"][:, :t])
            assert torch.equal(got["labels"], full["labels"][:, :t])


def test_seq_len_warmup_resume_is_bitwise_identical(data_dir, tmp_path):
    """Cut at step 20, in the middle of the warmup: the resumed run takes the same lengths and
    writes exactly the records of the run that never stopped."""
    args = [*TINY, "--data", str(data_dir), "--max-steps", "40", "--ckpt-every", "20",
            "--eval-every", "20", "--seq-len-warmup", "30", "--seq-len-start", "8",
            "--sample-tokens", "0"]
    cli("pretrain", "--out", str(tmp_path / "ref"), *args)
    run = tmp_path / "cut"
    shutil.copytree(tmp_path / "ref", run)
    shutil.rmtree(run / "checkpoints" / "step_0000040")
    shutil.rmtree(run / "final")

    def rows(r: Path) -> list[tuple]:
        return [(x["step"], x["loss"], x["lr"], x["tokens"], x.get("val_loss"))
                for x in metrics(r)]

    cli("pretrain", "--out", str(run), "--resume", "--no-progress")
    assert rows(run) == rows(tmp_path / "ref") and rows(run)[-1][0] == 40
    # The tokens trained on: batch 4 x the step's length, summed (8 + 24 s / 30, in 8s).
    lengths = [min(32, (8 + 24 * s // 30) // 8 * 8) if s < 30 else 32 for s in range(40)]
    assert [r[3] for r in rows(run)] == [4 * sum(lengths[: s + 1]) for s in range(40)]


def test_seq_len_warmup_needs_the_same_setting_to_resume(data_dir, tmp_path):
    args = [*TINY, "--data", str(data_dir), "--max-steps", "4", "--ckpt-every", "2",
            "--eval-every", "0", "--sample-tokens", "0"]
    cli("pretrain", "--out", str(tmp_path / "r"), *args, "--seq-len-warmup", "10")
    shutil.rmtree(tmp_path / "r" / "checkpoints" / "step_0000004")
    r = cli("pretrain", "--out", str(tmp_path / "r"), *args, "--resume", "--seq-len-warmup",
            "0", check=False)
    assert r.returncode != 0 and "seq_len_warmup=10" in r.stderr, r.stderr


@pytest.mark.parametrize("flags, named", [
    (["--seq-len-warmup", "-1"], "--seq-len-warmup"),
    (["--seq-len-start", "0"], "--seq-len-start"),
    (["--seq-len-warmup", "5", "--seq-len-start", "64"], "seq_len_start=64"),
    (["--value-embeds", "-1"], "--value-embeds"),
    (["--value-embeds", "3"], "value_embeds=3"),  # TINY has 2 layers
])
def test_bad_switch_values_are_named(data_dir, tmp_path, flags, named):
    r = cli("pretrain", "--out", str(tmp_path / "r"), *TINY, "--data", str(data_dir),
            *flags, check=False)
    assert r.returncode != 0 and named in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "r").exists()  # refused before any work


def test_seq_len_warmup_is_pretraining_only(tmp_path):
    r = cli("sft", "--out", str(tmp_path / "r"), "--seq-len-warmup", "5", check=False)
    assert r.returncode != 0 and "--seq-len-warmup" in r.stderr
