"""LoRA / DoRA / QLoRA against HF PEFT: same logits, same trainable counts, files both ways."""

from __future__ import annotations

import dataclasses
import math

import peft
import pytest
import torch
import transformers
from peft_common import export_hf, randomize, tiny_model

from llmlab.peft.accounting import LlamaShape, lora_params
from llmlab.peft.model import get_peft_model, load_adapter

IDS = torch.tensor([[5, 17, 3, 90, 44, 2, 61, 8], [1, 2, 3, 4, 5, 6, 7, 8]])


def _hf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


@pytest.mark.parametrize("kw", [
    dict(method="lora", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    dict(method="lora", r=4, lora_alpha=16, use_rslora=True, target_modules="all-linear"),
    dict(method="dora", r=4, lora_alpha=8, target_modules=["q_proj", "down_proj", "k_proj"]),
])
def test_our_adapter_loads_in_peft_with_same_logits(tmp_path, kw):
    base = tiny_model()
    hf_dir = export_hf(base, tmp_path / "hf")
    kw = dict(kw)
    pm = get_peft_model(base, kw.pop("method"), **kw)
    randomize(pm)
    pm.save_adapter(tmp_path / "ad")
    with torch.no_grad():
        ours = pm(IDS).logits
        ref_model = peft.PeftModel.from_pretrained(_hf(hf_dir), tmp_path / "ad").eval()
        ref = ref_model(IDS).logits
    cfgd = dataclasses.replace(ref_model.peft_config["default"], inference_mode=False)
    fresh = peft.get_peft_model(_hf(hf_dir), cfgd)
    # PEFT's count of what it would train, from our saved config, is ours.
    assert pm.parameter_counts() == fresh.get_nb_trainable_parameters()
    assert (ours - ref).abs().max().item() <= 1e-4
    assert not torch.allclose(ours, tiny_model()(IDS).logits, atol=1e-3)  # adapter mattered


def test_peft_adapter_loads_into_llmlab(tmp_path):
    base = tiny_model()
    hf_dir = export_hf(base, tmp_path / "hf")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["k_proj", "o_proj", "up_proj"],
                          use_dora=True, task_type="CAUSAL_LM")
    ref = peft.get_peft_model(_hf(hf_dir), cfg)
    randomize(ref, seed=3)
    ref.save_pretrained(tmp_path / "peft_ad")
    pm = load_adapter(tiny_model(), tmp_path / "peft_ad")
    with torch.no_grad():
        assert (pm(IDS).logits - ref.eval()(IDS).logits).abs().max().item() <= 1e-4


def test_print_trainable_parameters_matches_peft(tmp_path, capsys):
    base = tiny_model(tie=True)
    hf_dir = export_hf(base, tmp_path / "hf")
    pm = get_peft_model(base, "lora", r=8, target_modules="all-linear")
    ref = peft.get_peft_model(_hf(hf_dir), peft.LoraConfig(r=8, target_modules="all-linear",
                                                           task_type="CAUSAL_LM"))
    ref.print_trainable_parameters()
    assert pm.trainable_summary() == capsys.readouterr().out.strip()
    shape = LlamaShape(64, 2, 4, 2, 16, 128, 96, tie_embeddings=True)
    from llmlab.peft.lora import LINEAR_NAMES

    assert pm.parameter_counts()[0] == lora_params(shape, 8, list(LINEAR_NAMES))


def test_lora_init_merge_unmerge():
    base = tiny_model()
    with torch.no_grad():
        before = base(IDS).logits.clone()
    pm = get_peft_model(base, "dora", r=4, target_modules="all-linear")
    with torch.no_grad():  # B = 0 and m = ||W||: the adapter starts as the identity
        assert torch.allclose(pm(IDS).logits, before, atol=1e-5)
    lin = pm.base_model.model.layers[0].self_attn.q_proj
    bound = 1 / math.sqrt(lin.in_features)  # kaiming_uniform(a=sqrt 5) on (r, d_in)
    assert lin.lora_A.weight.abs().max() <= bound and lin.lora_B.weight.abs().sum() == 0
    randomize(pm)
    with torch.no_grad():
        adapted = pm(IDS).logits.clone()
        for m in pm.base_model.modules():
            if hasattr(m, "merge"):
                m.merge()
        assert torch.allclose(pm(IDS).logits, adapted, atol=1e-4)
        for m in pm.base_model.modules():
            if hasattr(m, "unmerge"):
                m.unmerge()
        assert torch.allclose(pm(IDS).logits, adapted, atol=1e-4)
        merged = pm.merge_and_unload()
        assert torch.allclose(merged(IDS).logits, adapted, atol=1e-4)


def test_bad_adapter_config_names_file_and_field(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "bias": "all"}')
    with pytest.raises(ValueError, match=r"adapter_config.json: field 'bias'"):
        load_adapter(tiny_model(), tmp_path)
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA",\n "r": }')
    with pytest.raises(ValueError, match=r"adapter_config.json: line 2"):
        load_adapter(tiny_model(), tmp_path)


def test_lora_training_gradients_match_peft(tmp_path):
    # A training step's loss and every adapter gradient, ours (LoraFn) vs PEFT's autograd.
    base = tiny_model()
    hf_dir = export_hf(base, tmp_path / "hf")
    pm = get_peft_model(base, "lora", r=4, lora_alpha=8, target_modules="all-linear")
    randomize(pm)  # non-zero B: gradients reach A, and x through the low-rank path
    pm.save_adapter(tmp_path / "ad")
    ref = peft.PeftModel.from_pretrained(_hf(hf_dir), tmp_path / "ad", is_trainable=True)
    pm.train()
    ref.train()
    labels = IDS.roll(-1, dims=1)
    losses = []
    for m in (pm, ref):
        logits = m(input_ids=IDS).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    theirs = {k.removeprefix("base_model.model.").replace(".default", ""): p.grad
              for k, p in ref.named_parameters() if p.requires_grad}
    ours = {k: p.grad for k, p in pm.base_model.named_parameters() if p.requires_grad}
    assert sorted(ours) == sorted(theirs) and len(ours) == 2 * 2 * 7
    for k, g in ours.items():
        assert g is not None and g.abs().sum() > 0, k
        assert (g - theirs[k]).abs().max() <= 1e-5 * (1 + theirs[k].abs().max()), k


@pytest.mark.parametrize("case", ["dropout+bias", "nf4", "bf16-autocast"])
def test_lora_fn_matches_autograd_of_the_formula(case):
    # y = x W^T + b + s B A dropout(x): LoraFn's hand-written backward vs torch autograd.
    from llmlab.peft.lora import LoraConfig, LoraLinear
    from llmlab.peft.nf4 import NF4Linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=case == "dropout+bias")
    base = NF4Linear(lin) if case == "nf4" else lin
    p = 0.3 if case == "dropout+bias" else 0.0
    mod = LoraLinear(base, LoraConfig(r=4, lora_alpha=12, lora_dropout=p)).train()
    with torch.no_grad():
        mod.lora_B.weight.normal_()
    w = base.dequantize() if case == "nf4" else lin.weight.detach()
    x = torch.randn(3, 5, 64, requires_grad=True)
    xr = x.detach().clone().requires_grad_(True)
    a = mod.lora_A.weight.detach().clone().requires_grad_(True)
    b = mod.lora_B.weight.detach().clone().requires_grad_(True)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "bf16-autocast")
    g = torch.randn(3, 5, 48)
    with amp:
        torch.manual_seed(1)
        y = mod(x)
        torch.manual_seed(1)  # the same dropout mask
        yr = (torch.nn.functional.linear(xr, w, lin.bias if lin.bias is not None else None)
              + 3.0 * torch.nn.functional.linear(
                  torch.nn.functional.linear(torch.nn.functional.dropout(xr, p), a), b))
    (y.float() * g).sum().backward()
    (yr.float() * g).sum().backward()
    tol = 3e-2 if case == "bf16-autocast" else 1e-5
    assert y.dtype == yr.dtype
    for ours, ref in [(y, yr), (x.grad, xr.grad), (mod.lora_A.weight.grad, a.grad),
                      (mod.lora_B.weight.grad, b.grad)]:
        assert (ours.float() - ref.float()).abs().max() <= tol * (1 + ref.abs().max())
