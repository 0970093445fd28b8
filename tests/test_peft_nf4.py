"""NF4 + double quantisation: the QLoRA code book, round-trip error, stored size; QLoRA counts."""

from __future__ import annotations

import torch
from peft_common import tiny_model

from llmlab.peft.model import get_peft_model
from llmlab.peft.nf4 import NF4_LEVELS, dequantize_nf4, quantize_nf4


def test_codebook_is_normal_quantiles():
    # QLoRA eq. (4): levels are N(0,1) quantiles, 8 positive and 7 negative, normalised.
    from statistics import NormalDist

    offset = 0.9677083
    nd = NormalDist()
    # (bitsandbytes' create_normal_map): linspace(offset, 0.5, 9)[:-1] and (.., 8)[:-1]
    pos = [nd.inv_cdf(offset + (0.5 - offset) * i / 8) for i in range(8)]
    neg = [-nd.inv_cdf(offset + (0.5 - offset) * i / 7) for i in range(7)]
    levels = sorted([p / pos[0] for p in pos] + [n / pos[0] for n in neg] + [0.0])
    ref = sorted(NF4_LEVELS)
    assert len(levels) == 16
    assert max(abs(a - b) for a, b in zip(levels, ref, strict=True)) < 1e-3


def test_round_trip_and_size():
    torch.manual_seed(0)
    w = torch.randn(256, 512) * 0.02
    q = quantize_nf4(w)
    back = dequantize_nf4(q, w.shape)
    # Each block's error is at most half the widest gap between levels times its absmax.
    assert (back - w).abs().max() <= 0.2 * w.abs().max()
    assert torch.corrcoef(torch.stack([w.flatten(), back.flatten()]))[0, 1] > 0.99
    bits = sum(t.numel() * t.element_size() for t in q.values()) * 8 / w.numel()
    assert 4.12 < bits < 4.14  # 4 + 8/64 + 32/(64*256)


def test_qlora_counts_match_peft_lora():
    import tempfile

    import peft
    import transformers
    from peft_common import export_hf

    base = tiny_model()
    with tempfile.TemporaryDirectory() as d:
        export_hf(base, d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d)
    ref = peft.get_peft_model(hf, peft.LoraConfig(r=4, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    pm = get_peft_model(base, "qlora", r=4, target_modules="all-linear")
    assert pm.parameter_counts() == ref.get_nb_trainable_parameters()
    ids = torch.tensor([[3, 9, 27, 81]])
    loss = pm(ids).logits.float().pow(2).mean()
    loss.backward()
    lin = pm.base_model.model.layers[0].self_attn.q_proj
    assert lin.lora_B.weight.grad is not None and lin.lora_B.weight.grad.abs().sum() > 0


def test_qlora_keeps_no_dequantised_weight_for_backward():
    # Training memory holds the 4-bit base only: nothing weight-sized is saved for backward.
    from llmlab.peft.nf4 import NF4Linear

    pm = get_peft_model(tiny_model(), "qlora", r=4, target_modules=["q_proj", "v_proj"])
    shapes = {(m.out_features, m.in_features) for m in pm.modules() if isinstance(m, NF4Linear)}
    saved: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = pm(torch.tensor([[3, 9, 27, 81, 5, 7]])).logits.pow(2).mean()
    assert saved and not shapes & set(saved)
    loss.backward()
    lin = pm.base_model.model.layers[1].mlp.up_proj  # NF4 base without LoRA: grad passes
    assert isinstance(lin, NF4Linear)
    assert pm.base_model.model.layers[0].self_attn.q_proj.lora_B.weight.grad.abs().sum() > 0
