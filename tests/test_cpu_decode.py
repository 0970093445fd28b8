"""Weight-only int4 and the lean CPU decode step: int4 gives back the GGUF's own Q4_1 values,
its kernel computes what its dequantised weights do, and decoding through the lean step
follows the model and transformers (the fp32 reference) on the real SmolLM2."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from test_real_models import PASSAGE, hf_gguf, smol  # noqa: F401  (fixtures)

from llmlab.generate.engine import iter_decode
from llmlab.generate.fast.cpu import LeanDecoder
from llmlab.generate.sampling import SamplingParams
from llmlab.model import ModelConfig, Transformer
from llmlab.model.quant import Int4Linear, quantize_groups_int4, quantize_int4_, quantize_int8_
from llmlab.settings import speed_override


def test_int4_gives_back_the_gguf_q4_1_weights(smol):  # noqa: F811
    """SmolLM2's projections are Q4_1 in the file (scale and minimum per 32 weights): with
    fp32 scales, quantising their dequantised values again is exact."""
    layers = smol.model.model.layers
    for lin in (layers[0].mlp.down_proj, layers[7].self_attn.q_proj):
        w = lin.weight.detach()
        assert torch.equal(Int4Linear(lin, act_dtype=torch.float32).dequantize(), w)


def test_int4_kernel_and_prefill_path_compute_the_dequantised_matmul():
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 96, bias=True)
    m = Int4Linear(lin)
    w = m.dequantize().float()
    q, scale, lo = quantize_groups_int4(lin.weight.detach())
    assert torch.equal(torch.stack([m.weight_nibbles & 15, m.weight_nibbles >> 4], -1)
                       .reshape(96, 256), q)  # nibbles: low = even input
    assert (w - lin.weight).abs().max() <= 0.51 * scale.max() + 1e-2  # half a step, bf16
    for rows in (1, 3, 40):  # the int4 kernel (decode), then the dense path (prefill)
        x = torch.randn(rows, 256)
        ref = x.bfloat16().float() @ w.t() + lin.bias.bfloat16().float()
        got = m(x).float()
        assert (got - ref).abs().max() <= 0.02 * ref.abs().max(), rows


def _tiny() -> Transformer:
    cfg = ModelConfig(vocab_size=512, d_model=64, n_layer=2, n_head=4, n_kv_head=2,
                      head_dim=16, d_ff=128, max_seq_len=128, pos="rope", norm="rmsnorm",
                      mlp="swiglu", bias=False, tie_embeddings=True)
    torch.manual_seed(0)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("quant", [quantize_int4_, quantize_int8_])
def test_lean_steps_follow_the_models_own_forward(quant):
    """The lean step against the same quantized model's forward, with activations in fp32
    on both sides (the kernels take fp32 too): the same maths, so the same logits up to
    the order of fp32 sums."""
    m = quant(_tiny(), act_dtype=torch.float32)
    ids = torch.randint(0, 512, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    lean = LeanDecoder(m, 64)
    got = torch.cat([lean.step(t) for t in ids])
    with torch.inference_mode():
        ref = m(torch.tensor([ids])).logits[0]
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()


@pytest.mark.parametrize("quant", [quantize_int4_, quantize_int8_])
def test_lean_decoding_of_smollm2_agrees_with_transformers_fp32(smol, hf_gguf, quant):  # noqa: F811
    """Teacher-forced through the lean step (the decode kernels), SmolLM2 int4 and int8
    predict the next token as transformers' fp32 model of the same GGUF does."""
    hf, _ = hf_gguf
    ids = smol.tokenizer.encode(PASSAGE)
    q = quant(copy.deepcopy(smol.model))
    lean = LeanDecoder(q, len(ids))
    got = torch.cat([lean.step(t) for t in ids])
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    agree = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0).item()
    assert agree > 0.9 and cos > 0.99, (agree, cos)


def test_engine_takes_the_lean_step_only_for_quantized_batch_one(monkeypatch):
    calls = []
    step = LeanDecoder.step
    monkeypatch.setattr(LeanDecoder, "step", lambda self, t: calls.append(t) or step(self, t))
    m = quantize_int4_(_tiny())
    p = SamplingParams(max_new_tokens=6, temperature=0)
    with_lean = [int(s.tokens[0]) for s in iter_decode(m, [[5, 6, 7]], p)]
    assert len(calls) == 5  # every token after the one the prefill gives
    with speed_override(lean_decode=False):
        assert [int(s.tokens[0]) for s in iter_decode(m, [[5, 6, 7]], p)] == with_lean
    list(iter_decode(m, [[5, 6, 7], [8, 9]], p))  # batch 2, padded: the model
    list(iter_decode(_tiny(), [[5, 6, 7]], p))  # not quantized: the model
    assert len(calls) == 5
    assert os.environ.get("LLMLAB_LEAN_DECODE") is None
