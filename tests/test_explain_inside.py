"""Inside the model (issue #23): the logit lens against transformers' hidden states, head
roles on a model with a planted circuit, ablation and patching against the same edits made
by hand (weights zeroed, the stack run layer by layer), and the sink removal against a
softmax that never saw key 0."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from next_token_ref import hf_export

from llmlab.explain.heads import head_roles, role_scores
from llmlab.explain.lens import lens_logits, logit_lens, residual_stream
from llmlab.explain.patching import ablate, ablation_edit, patch_sweep, run_patched
from llmlab.explain.sinks import sink_share, without_sink
from llmlab.model import ModelConfig, Transformer
from llmlab.model.hooks import intervene

PYDOCS = Path("/usr/share/doc/python3.11/html/_sources/tutorial")
TEXT = "Classes provide a means of bundling data and functionality together."
ARCHS = {
    "llama": dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2,
                  tie_embeddings=False),
    "gpt2": dict(pos="learned", norm="layernorm", mlp="gelu_tanh", bias=True,
                 tie_embeddings=True),
}


@pytest.fixture(scope="module")
def bpe():  # noqa: ANN201
    from llmlab.tokenizer import train_bpe

    return train_bpe([(PYDOCS / "classes.rst.txt").read_text(encoding="utf-8")],
                     vocab_size=384, pattern="gpt2", progress=False)


def tiny(bpe, arch: str, seed: int = 0) -> SimpleNamespace:  # noqa: ANN001
    cfg = ModelConfig(vocab_size=384, d_model=64, n_layer=3, n_head=4, max_seq_len=64,
                      d_ff=128, **ARCHS[arch])
    torch.manual_seed(seed)
    return SimpleNamespace(name=arch, model=Transformer(cfg).eval(), tokenizer=bpe)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_logit_lens_matches_transformers_hidden_states(bpe, arch: str, tmp_path: Path) -> None:
    lm = tiny(bpe, arch)
    ref = hf_export(lm, tmp_path / arch)
    ids = torch.tensor([bpe.encode(TEXT)])
    with torch.no_grad():
        hs = ref(ids, output_hidden_states=True).hidden_states
        # transformers' last hidden state has the final norm applied already; the others
        # get the model's own norm here, then every one its own LM head.
        body = ref.model if arch == "llama" else ref.transformer
        norm = body.norm if arch == "llama" else body.ln_f
        ref_logits = torch.stack([ref.lm_head(norm(h)) for h in hs[:-1]]
                                 + [ref.lm_head(hs[-1])])[:, 0].float()
    ours = lens_logits(lm.model, residual_stream(lm.model, ids))[:, 0]
    assert ours.shape == ref_logits.shape == (4, ids.shape[1], 384)
    assert (ours.log_softmax(-1) - ref_logits.log_softmax(-1)).abs().max() <= 1e-4

    lens = logit_lens(lm, TEXT, top_k=3)
    p_ref, i_ref = ref_logits.softmax(-1).topk(3, dim=-1)
    assert (torch.tensor(lens.top_probs) - p_ref).abs().max() <= 1e-5
    assert (torch.tensor(lens.top_ids) == i_ref).float().mean() > 0.99
    # The last row is the model's own prediction: its final_prob is its top probability.
    assert lens.final_prob[-1] == pytest.approx([r[0] for r in lens.top_probs[-1]])
    assert all(r == 0 for r in lens.final_rank[-1])


def planted() -> SimpleNamespace:
    """A 2-layer model built by hand, with an induction circuit: head (0, 2) copies each
    token's predecessor into a PREV subspace; head (1, 1) matches the current token against
    PREV (so it attends to the token after the last occurrence) and copies that token to
    OUT, which the LM head reads; head (1, 3) attends to earlier copies of the same token."""
    v, p, hd, beta = 32, 64, 64, 30.0
    tok, prev, out, pos = 0, v, 2 * v, 3 * v  # the residual stream's subspaces
    cfg = ModelConfig(vocab_size=v, d_model=3 * v + p, n_layer=2, n_head=4, head_dim=hd,
                      max_seq_len=p, pos="learned", norm="rmsnorm", mlp="relu", d_ff=8,
                      bias=False, tie_embeddings=False)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for prm in m.parameters():
            prm.zero_()
        for mod in m.modules():  # norms back to gain 1
            if hasattr(mod, "eps") and hasattr(mod, "weight"):
                mod.weight.fill_(1.0)
        r = torch.arange(v)
        m.model.embed_tokens.weight[r, tok + r] = 1.0
        m.model.embed_positions.weight[torch.arange(p), pos + torch.arange(p)] = 1.0
        m.lm_head.weight[r, out + r] = 1.0
        a0, a1 = m.model.layers[0].self_attn, m.model.layers[1].self_attn
        h = 2 * hd  # previous-token head (0, 2): query position i, key position j + 1
        a0.q_proj.weight[h + torch.arange(p), pos + torch.arange(p)] = beta
        a0.k_proj.weight[h + torch.arange(1, p), pos + torch.arange(p - 1)] = 1.0
        a0.v_proj.weight[h + r, tok + r] = 1.0
        a0.o_proj.weight[prev + r, h + r] = 1.0
        h = 1 * hd  # induction head (1, 1): query token t, key PREV t
        a1.q_proj.weight[h + r, tok + r] = beta
        a1.k_proj.weight[h + r, prev + r] = 1.0
        a1.v_proj.weight[h + r, tok + r] = 1.0
        a1.o_proj.weight[out + r, h + r] = 1.0
        h = 3 * hd  # duplicate-token head (1, 3): query token t, key token t
        a1.q_proj.weight[h + r, tok + r] = beta
        a1.k_proj.weight[h + r, tok + r] = 1.0
    tk = SimpleNamespace(special_tokens={}, pieces=lambda ids: [f"t{i}" for i in ids])
    return SimpleNamespace(model=m, tokenizer=tk)


def test_planted_heads_rank_first() -> None:
    lm = planted()
    roles = head_roles(lm, n=24, seed=3)
    ids = torch.tensor([roles.ids])
    # The circuit works: the second copy is predicted token for token (but its first: the
    # previous-token head at position 0 sees only itself, so r_0 also matches position 0).
    pred = lm.model(ids).logits[0].argmax(-1)
    assert torch.equal(pred[25:-1], ids[0, 26:])
    assert roles.top["previous"][0][:2] == (0, 2) and roles.top["previous"][0][2] > 0.9
    assert roles.top["induction"][0][:2] == (1, 1) and roles.top["induction"][0][2] > 0.9
    assert roles.top["duplicate"][0][:2] == (1, 3)
    assert roles.top["copying"][0][:2] == (1, 1)
    assert roles.copying[1][1] == pytest.approx(1.0, abs=1e-6)  # OV = identity on tokens


def test_role_scores_read_the_right_cells() -> None:
    n, t = 3, 6
    w = torch.zeros(1, 1, t, t)
    w[0, 0, torch.arange(1, t), torch.arange(t - 1)] = 1.0  # a perfect previous-token head
    s = role_scores(w, n)
    assert s["previous"].item() == 1.0 and s["induction"].item() == 0.0
    w2 = torch.zeros(1, 1, t, t)
    w2[0, 0, n + torch.arange(n - 1), torch.arange(1, n)] = 1.0  # perfect induction
    assert role_scores(w2, n)["induction"].item() == 1.0
    with pytest.raises(ValueError, match="expected 6 positions"):
        role_scores(torch.zeros(1, 1, 5, 5), n)


def test_ablating_nothing_and_by_hand(bpe) -> None:
    lm = tiny(bpe, "llama")
    ids = torch.tensor([bpe.encode(TEXT)])
    with torch.no_grad():
        base = lm.model(ids).logits
    with intervene(lm.model, {("head", 1): lambda z: None, ("mlp", 2): lambda y: None}):
        assert torch.equal(lm.model(ids).logits, base)
    res = ablate(lm, TEXT, "head", 1, head=2)
    # By hand: head 2's columns of o_proj zeroed is the same knock-out.
    ref = tiny(bpe, "llama")
    hd = ref.model.cfg.head_dim
    with torch.no_grad():
        ref.model.model.layers[1].self_attn.o_proj.weight[:, 2 * hd:3 * hd] = 0
        want = ref.model(ids).logits[0, -1].softmax(-1)
        mlp_off = tiny(bpe, "llama")
        mlp_off.model.model.layers[0].mlp.down_proj.weight.zero_()
        want_mlp = mlp_off.model(ids).logits
    assert (torch.tensor(res.p_ablated) - want[res.top_ids]).abs().max() <= 1e-6
    assert res.loss == pytest.approx(float(torch.nn.functional.cross_entropy(
        base[0, :-1], ids[0, 1:])), abs=1e-5)
    with intervene(lm.model, {("mlp", 0): ablation_edit("mlp", None, "zero")}):
        assert torch.allclose(lm.model(ids).logits, want_mlp, atol=1e-5)
    mean = ablate(lm, TEXT, "mlp", 0, how="mean")
    assert mean.kl >= 0 and math.isfinite(mean.loss_ablated)
    lm.model.train()  # the explain calls run in eval mode, then leave it as it was
    ablate(lm, TEXT, "mlp", 0)
    logit_lens(lm, TEXT)
    assert lm.model.training
    lm.model.eval()
    with pytest.raises(ValueError, match="head: must be in"):
        ablate(lm, TEXT, "head", 0, head=9)
    with pytest.raises(ValueError, match="site: layer must be in"):
        ablate(lm, TEXT, "mlp", 3)


def by_hand(model: Transformer, ids: torch.Tensor, layer: int, pos: list[int],
            source: torch.Tensor) -> torch.Tensor:
    """The stack run block by block, the stream entering `layer` overwritten at `pos`."""
    st = model.model
    positions = torch.arange(ids.shape[1])[None]
    x = st.embed(ids, positions, None)
    rope = st.rope(positions, x.dtype)
    for i, block in enumerate(st.layers):
        if i == layer:
            x = x.clone()
            x[:, pos] = source[:, pos]
        x = block(x, None, True, rope, None)
    return model.lm_head(st.norm(x))[:, -1]


def test_patching_identities_and_by_hand(bpe) -> None:
    lm = tiny(bpe, "llama", seed=1)
    m = lm.model
    clean, corrupt = "data and functionality", "classes and functionality"
    c, x = (torch.tensor([bpe.encode(s)]) for s in (clean, corrupt))
    assert c.shape == x.shape
    with torch.no_grad():
        c_logits, x_logits = m(c).logits[:, -1], m(x).logits[:, -1]
        t = c.shape[1]
        resid_c = residual_stream(m, c)
        for layer in range(m.cfg.n_layer + 1):
            site = ("resid", layer)
            out = run_patched(m, x, resid_c[layer], site, [list(range(t)), []])
            assert torch.allclose(out[0], c_logits[0], atol=1e-5)  # everything: clean
            assert torch.allclose(out[1], x_logits[0], atol=1e-5)  # nothing: corrupted
        for layer, pos in [(0, [1]), (2, [0, t - 1])]:
            out = run_patched(m, x, resid_c[layer], ("resid", layer), [pos])
            assert torch.allclose(out[0], by_hand(m, x, layer, pos, resid_c[layer])[0],
                                  atol=1e-5)
    sweep = patch_sweep(lm, clean, corrupt, answer=" and", wrong="al")
    r = torch.tensor(sweep.restored)
    assert r.shape == (m.cfg.n_layer + 1, t)
    # The sweep starts each layer from the corrupted stream; the hooks rerun it all.
    a, w = bpe.encode(" and")[0], bpe.encode("al")[0]
    with torch.no_grad():
        for layer in range(m.cfg.n_layer + 1):
            out = run_patched(m, x, resid_c[layer], ("resid", layer), [[p] for p in range(t)])
            ld = out[:, a] - out[:, w]
            want = (ld - sweep.ld_corrupt) / (sweep.ld_clean - sweep.ld_corrupt)
            assert torch.allclose(r[layer], want, atol=1e-4)
    # After the last block only the last position feeds the prediction: all of it, or none.
    assert r[-1, -1].item() == pytest.approx(1.0, abs=1e-4)
    assert r[-1, :-1].abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match="corrupt: .* tokens, but the clean prompt"):
        patch_sweep(lm, clean, corrupt + " and more")


def test_sink_removal_is_the_softmax_without_key_0() -> None:
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 6, 6)
    scores = scores.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
    w = scores.softmax(-1)
    got = without_sink(w)
    want = scores[..., 1:].softmax(-1)
    assert torch.allclose(got[..., 1:, 1:], want[..., 1:, :], atol=1e-6)
    assert got[..., 1:, 0].abs().max() == 0
    assert torch.equal(got[..., 0, :], w[..., 0, :])  # query 0 has only itself
    assert torch.allclose(sink_share(w), w[..., 1:, 0].mean(-1))
