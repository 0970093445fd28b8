"""Prompt tuning, prefix tuning (same logits as PEFT from our files) and bottleneck adapters."""

from __future__ import annotations

import dataclasses

import peft
import pytest
import torch
import transformers
from peft_common import export_hf, randomize, tiny_model

from llmlab.peft.accounting import LlamaShape, adapter_params
from llmlab.peft.model import get_peft_model, load_adapter

IDS = torch.tensor([[5, 17, 3, 90, 44, 2], [1, 2, 3, 4, 5, 6]])


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_virtual_tokens_match_peft(tmp_path, method):
    base = tiny_model()
    hf_dir = export_hf(base, tmp_path / "hf")
    pm = get_peft_model(base, method, num_virtual_tokens=5)
    pm.save_adapter(tmp_path / "ad")
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)
    ref = peft.PeftModel.from_pretrained(hf, tmp_path / "ad").eval()
    with torch.no_grad():
        ours = pm(IDS).logits
        ref_logits = ref(input_ids=IDS).logits[:, -IDS.shape[1]:]  # PEFT keeps the virtual rows
        assert (ours - ref_logits).abs().max().item() <= 1e-4
        back = load_adapter(tiny_model(), tmp_path / "ad")
        assert torch.allclose(back(IDS).logits, ours, atol=1e-6)
    fresh = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(hf_dir),
                                dataclasses.replace(ref.peft_config["default"],
                                                    inference_mode=False))
    assert pm.parameter_counts() == fresh.get_nb_trainable_parameters()


def test_bottleneck_adapters(tmp_path):
    base = tiny_model()
    with torch.no_grad():
        before = base(IDS).logits.clone()
    pm = get_peft_model(base, "adapter", bottleneck=8)
    with torch.no_grad():
        assert torch.allclose(pm(IDS).logits, before, atol=1e-6)  # up = 0: identity at start
    shape = LlamaShape(64, 2, 4, 2, 16, 128, 96)
    assert pm.parameter_counts()[0] == adapter_params(shape, 8)
    randomize(pm)
    pm.save_adapter(tmp_path / "ad")
    back = load_adapter(tiny_model(), tmp_path / "ad")
    with torch.no_grad():
        assert torch.allclose(back(IDS).logits, pm(IDS).logits, atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "dora", "qlora", "prompt", "prefix", "adapter"])
def test_disable_adapters_gives_the_base_model(method):
    """Inside disable_adapters the logits are the base model's (computed before the adapter
    was added; for QLoRA the same 4-bit base without LoRA), and the adapter is back after."""
    import copy

    from llmlab.align.reward import ScalarHead
    from llmlab.peft.lora import target_names
    from llmlab.peft.model import disable_adapters
    from llmlab.peft.nf4 import quantize_model

    base = tiny_model()
    ref = copy.deepcopy(base)
    if method == "qlora":
        quantize_model(ref, target_names(ref, "all-linear"))
    opts = ({"num_virtual_tokens": 4} if method in ("prompt", "prefix")
            else {"bottleneck": 8} if method == "adapter" else {"r": 4})
    pm = get_peft_model(base, method, **opts)
    randomize(pm)
    with torch.no_grad():
        want = ref(IDS).logits
        adapted = pm(IDS).logits
        assert (adapted - want).abs().max() > 1e-3  # the adapter does change the output
        with pm.disable_adapters():
            assert torch.allclose(pm(IDS).logits, want, atol=1e-5)
            with disable_adapters(ScalarHead(pm)):  # nested, and through a wrapper
                assert torch.allclose(pm(IDS).logits, want, atol=1e-5)
            assert torch.allclose(pm(IDS).logits, want, atol=1e-5)
        assert torch.allclose(pm(IDS).logits, adapted, atol=1e-6)
    with pytest.raises(ValueError, match="no adapters"), disable_adapters(tiny_model()):
        pass


def test_disable_adapters_unmerges_merged_lora():
    from llmlab.peft.lora import LoraLinear
    from llmlab.peft.model import disable_adapters

    base = tiny_model()
    with torch.no_grad():
        want = base(IDS).logits.clone()
    pm = get_peft_model(base, "lora", r=4)
    randomize(pm)
    with torch.no_grad():
        adapted = pm(IDS).logits
        for m in pm.modules():
            if isinstance(m, LoraLinear):
                m.merge()
        with disable_adapters(pm):
            assert torch.allclose(pm(IDS).logits, want, atol=1e-5)
        assert all(m.merged for m in pm.modules() if isinstance(m, LoraLinear))
        assert torch.allclose(pm(IDS).logits, adapted, atol=1e-5)
