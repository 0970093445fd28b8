"""The training step's kernels against torch's own: the oneDNN Linear (llmlab/model/linear.py)
against F.linear + autograd, the fused output-projection + cross-entropy (llmlab/model/loss.py)
against F.cross_entropy + autograd, RMSNorm's written-out backward against transformers'
LlamaRMSNorm + autograd, and the whole model's loss and gradients against transformers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmlab.model import ModelConfig, Transformer
from llmlab.model import linear as onednn
from llmlab.model.loss import linear_cross_entropy
from llmlab.weights.hf import save_hf


@pytest.mark.parametrize("rows,d_in,d_out,bias", [(2048, 128, 384, True), (2048, 384, 128, False),
                                                  (300, 64, 64, True), (70, 32, 4096, False)])
def test_onednn_linear_matches_f_linear_and_autograd(rows, d_in, d_out, bias):
    assert onednn.enabled()  # the fast path this test exists for is really taken
    g = torch.Generator().manual_seed(rows + d_out)
    x = torch.randn(2, rows // 2, d_in, generator=g, requires_grad=True)
    lin = onednn.Linear(d_in, d_out, bias=bias)
    ref = torch.nn.Linear(d_in, d_out, bias=bias)
    ref.load_state_dict(lin.state_dict())
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = lin(x), ref(x_ref)
    assert torch.allclose(y, y_ref, atol=1e-5, rtol=1e-5)
    up = torch.randn(y.shape, generator=g)
    y.backward(up)
    y_ref.backward(up)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-4, rtol=1e-5)
    assert torch.allclose(lin.weight.grad, ref.weight.grad, atol=1e-3, rtol=1e-5)
    if bias:
        assert torch.allclose(lin.bias.grad, ref.bias.grad, atol=1e-3, rtol=1e-5)
    lin.weight.requires_grad_(False)  # a frozen base layer (LoRA): only the input's gradient
    x.grad = None
    lin(x).backward(up)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        assert torch.allclose(lin(x), y_ref, atol=1e-5, rtol=1e-5)


def test_linear_keeps_f_linear_for_decoding_bf16_and_autocast():
    lin = onednn.Linear(64, 64)
    x = torch.randn(1, 3, 64)  # 3 rows: decoding
    assert not onednn.use_onednn(x, lin.weight)
    assert onednn.use_onednn(torch.randn(4, 64, 64), lin.weight)
    assert not onednn.use_onednn(torch.randn(4, 64, 64).bfloat16(), lin.weight.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn.use_onednn(torch.randn(4, 64, 64), lin.weight)


def _reference(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, scale: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    loss = F.cross_entropy((h @ w.t()).float(), y)
    (loss * scale).backward()
    return loss.detach(), h.grad, w.grad  # type: ignore[return-value]


@pytest.mark.parametrize("n,vocab,ignored", [(300, 1000, False), (3000, 700, True),
                                             (70, 50_000, True)])
def test_loss_and_grads_match_cross_entropy(n, vocab, ignored):
    g = torch.Generator().manual_seed(n)
    h = torch.randn(n, 32, generator=g, requires_grad=True)
    w = (0.3 * torch.randn(vocab, 32, generator=g)).requires_grad_()
    y = torch.randint(0, vocab, (n,), generator=g)
    if ignored:
        y[::3] = -100  # several chunks mix kept and ignored rows
    want, gh, gw = _reference(h, w, y, 2.5)
    got = linear_cross_entropy(h, w, y)
    (got * 2.5).backward()
    assert got.item() == pytest.approx(want.item(), abs=1e-5)
    assert torch.allclose(h.grad, gh, atol=1e-6, rtol=1e-4)
    assert torch.allclose(w.grad, gw, atol=1e-6, rtol=1e-4)
    with torch.no_grad():  # the evaluation path computes no gradients
        assert linear_cross_entropy(h, w, y).item() == pytest.approx(want.item(), abs=1e-5)


def test_underflowing_target_probability_keeps_the_exact_loss():
    # Logits 200 apart: p[y] underflows fp32, so -log p[y] alone would give inf.
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    w = torch.tensor([[200.0, 0.0], [0.0, 0.0], [0.0, -200.0]], requires_grad=True)
    y = torch.tensor([2, 1])
    want, gh, gw = _reference(h, w, y, 1.0)
    got = linear_cross_entropy(h, w, y)
    got.backward()
    assert torch.isfinite(got) and got.item() == pytest.approx(want.item(), rel=1e-6)
    assert torch.allclose(h.grad, gh) and torch.allclose(w.grad, gw)


def test_bf16_autocast_matches_autocast_linear_then_fp32_cross_entropy():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(500, 64, generator=g, requires_grad=True)
    w = (0.1 * torch.randn(2000, 64, generator=g)).requires_grad_()
    y = torch.randint(0, 2000, (500,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(h, w).float(), y)
        got = linear_cross_entropy(h, w, y)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), abs=2e-3)
    (gh,) = torch.autograd.grad(ref, h)
    (gh2,) = torch.autograd.grad(got, h)
    assert (gh2 - gh).abs().max().item() < 2e-2 * gh.abs().max().item()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_model_loss_and_grads_match_transformers(tmp_path, arch):
    """targets= gives transformers' loss, and backward gives its parameter gradients (the tied
    embedding/LM-head weight collects both of its gradients)."""
    from transformers import AutoModelForCausalLM

    kw = dict(vocab_size=300, d_model=64, n_layer=2, n_head=4, max_seq_len=64)
    if arch == "llama":
        kw.update(pos="rope", norm="rmsnorm", mlp="swiglu", d_ff=160, bias=False)
    torch.manual_seed(0)
    ours = Transformer(ModelConfig(**kw))
    save_hf(ours, tmp_path / "hf")
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager")
    x = torch.randint(0, 300, (3, 33))
    loss = ours(x[:, :-1], targets=x[:, 1:]).loss
    theirs = ref(x, labels=x).loss  # transformers shifts the labels itself
    assert loss.item() == pytest.approx(theirs.item(), abs=1e-5)
    loss.backward()
    theirs.backward()
    ref_emb = ref.get_input_embeddings().weight
    assert ref_emb is ref.get_output_embeddings().weight  # tied on both sides
    ours_emb = ours.model.embed_tokens.weight
    assert torch.allclose(ours_emb.grad, ref_emb.grad, atol=1e-6, rtol=1e-4)
    ours_norm = ours.model.norm.weight.grad
    ref_norm = (ref.transformer.ln_f if arch == "gpt2" else ref.model.norm).weight.grad
    assert torch.allclose(ours_norm, ref_norm, atol=1e-6, rtol=1e-4)


def test_compiled_training_step_matches_eager():
    """--compile: one graph (the oneDNN matmuls and the chunked loss are opaque custom ops
    inside it), same loss and gradients as eager."""
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=512, d_model=64, n_layer=2, n_head=4,
                                max_seq_len=64))
    x = torch.randint(0, 512, (4, 65))
    want = m(x[:, :-1], targets=x[:, 1:]).loss
    want.backward()
    grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    got = torch.compile(m, fullgraph=True)(x[:, :-1], targets=x[:, 1:]).loss
    got.backward()
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    for p, g in zip(m.parameters(), grads, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_match_log_softmax_of_the_logits_with_gradients(temperature: float
                                                                       ) -> None:
    """`Transformer(targets=..., reduction="none")` (chunked, logits never stored) is minus
    log_softmax of the plain logits / T gathered at the ids, and so are the gradients."""
    import torch.nn.functional as F

    from llmlab.model import ModelConfig, Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, d_model=32, n_layer=2, n_head=4, n_kv_head=2,
                      max_seq_len=64, pos="rope", norm="rmsnorm", mlp="swiglu", d_ff=64,
                      bias=False, tie_embeddings=True)
    m = Transformer(cfg).double()
    ids = torch.randint(0, 300, (3, 40))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    w = torch.randn(3, 40, dtype=torch.float64)

    def grads(lp: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        m.zero_grad()
        (lp * w).sum().backward()
        return lp.detach(), [p.grad.clone() for p in m.parameters()]

    ref = F.log_softmax(m(ids, attention_mask=mask).logits / temperature, -1)
    want, want_g = grads(ref.gather(-1, ids[..., None]).squeeze(-1))
    got, got_g = grads(-m(ids, attention_mask=mask, targets=ids, reduction="none",
                          temperature=temperature).loss)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    for a, b in zip(got_g, want_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("frozen", [False, True])
def test_rmsnorm_backward_matches_transformers(dtype, frozen):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from llmlab.model.layers import RMSNorm

    g = torch.Generator().manual_seed(3)
    ours, ref = RMSNorm(64, 1e-5), LlamaRMSNorm(64, 1e-5)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(64, generator=g))
        ref.weight.copy_(ours.weight)
    ours.weight.requires_grad_(not frozen)
    x = (torch.randn(3, 7, 64, generator=g) * 3).to(dtype)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), ref(x2)
    assert torch.equal(y1, y2)  # the same forward, bit for bit
    up = torch.randn(y1.shape, generator=g)
    (y1 * up).sum().backward()
    (y2 * up).sum().backward()
    # bf16: transformers rounds the gradient to bf16 once more inside its chain
    tol = 1e-6 if dtype == torch.float32 else 2 ** -7
    assert (x1.grad.float() - x2.grad.float()).abs().max() <= tol * x2.grad.abs().max()
    if frozen:
        assert ours.weight.grad is None
    else:
        assert torch.allclose(ours.weight.grad, ref.weight.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_backward_matches_transformers(dtype):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from llmlab.model.positions import apply_rope, rope_cos_sin

    g = torch.Generator().manual_seed(4)
    cos, sin = rope_cos_sin(torch.arange(9)[None], 16, 10000.0, torch.float32)
    q, k = (torch.randn(2, 3, 9, 16, generator=g).to(dtype) for _ in range(2))
    q1, k1, q2, k2 = (t.clone().requires_grad_() for t in (q, k, q, k))
    ours = apply_rope(q1, cos, sin), apply_rope(k1, cos, sin)
    # What attention gets: under autocast SDPA casts transformers' fp32 product to bf16;
    # ours comes out in q's dtype already.
    theirs = tuple(t.to(dtype) for t in apply_rotary_pos_emb(q2, k2, cos, sin))
    up = torch.randn(ours[0].shape, generator=g)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == dtype and torch.equal(a, b)
    ((ours[0] + 2 * ours[1]).float() * up).sum().backward()
    ((theirs[0] + 2 * theirs[1]).float() * up).sum().backward()
    # bf16: transformers adds the two paths' gradients in bf16, we add them in fp32
    tol = 1e-6 if dtype == torch.float32 else 2 ** -7
    for a, b in ((q1, q2), (k1, k2)):
        assert a.grad.dtype == dtype
        assert (a.grad.float() - b.grad.float()).abs().max() <= tol * b.grad.abs().max()
