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


def _greedy(model, prompts, n):  # noqa: ANN001, ANN202
    from llmlab.generate.engine import iter_decode
    from llmlab.generate.sampling import SamplingParams

    steps = list(iter_decode(model, prompts, SamplingParams(max_new_tokens=n, temperature=0),
                             return_logits=True))
    return torch.stack([s.tokens for s in steps], 1), [s.logits for s in steps]


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_cached_generation_equals_recompute_and_peft(tmp_path, method):
    """Our KV-cached greedy decoding with virtual tokens, against two references, each asserted
    on its own so a failure says which side broke:

    1. correctness: PEFT's model run without a cache (a full forward through `PeftModel` per
       token) picks our tokens, with our logits at every step;
    2. interop: PEFT's own cached `generate` picks our tokens.

    Upstream: with transformers 5.23.0 + peft 0.21.2 (the lock) both hold. With transformers
    5.24.0 or 5.25.0 (peft 0.21.1 or 0.21.2), (1) still holds but (2) fails: transformers
    renamed `past_key_values` to `cache` and PEFT's cached path for virtual tokens "ignores
    position ids", so its generate diverges from its own no-cache forward (prompt: the 5th
    token; prefix: from the 1st). requirements/constraints.txt keeps transformers < 5.24."""
    base = tiny_model()
    hf_dir = export_hf(base, tmp_path / "hf")
    pm = get_peft_model(base, method, num_virtual_tokens=4).eval()
    prompts = [[5, 17, 3, 90, 44, 2], [7, 8, 9]]  # left-padded together
    toks, logits = _greedy(pm, prompts, 6)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            for t in range(toks.shape[1]):
                seq = torch.tensor([p + toks[i, :t].tolist()])
                full = pm(seq).logits[0, -1]  # no cache: the whole sequence recomputed
                assert (full - logits[t][i]).abs().max().item() <= 1e-4, (i, t)
    pm.save_adapter(tmp_path / "ad")
    ref = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(hf_dir), tmp_path / "ad").eval()
    for i, p in enumerate(prompts):
        seq = torch.tensor([p])
        with torch.no_grad():
            for t in range(toks.shape[1]):  # 1. PEFT without a cache
                nxt = ref(input_ids=seq, attention_mask=torch.ones_like(seq),
                          use_cache=False).logits[0, -1]
                assert (nxt - logits[t][i]).abs().max().item() <= 1e-4, ("no-cache", i, t)
                seq = torch.cat([seq, nxt.argmax().view(1, 1)], 1)
        assert seq[0, len(p):].tolist() == toks[i].tolist(), "PEFT without a cache differs"
        out = ref.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p)),
                           max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert out[0, len(p):].tolist() == toks[i].tolist(), (
            f"PEFT {peft.__version__}'s cached generate with transformers "
            f"{transformers.__version__} differs from PEFT's own no-cache forward (which "
            "matches ours): an upstream interop break, see the docstring")


def test_prefix_adapter_generates_through_the_cli_path(tmp_path):
    # apply_adapter (what generate/chat --adapter call) + complete() with the KV cache.
    from llmlab.generate.engine import complete
    from llmlab.generate.sampling import SamplingParams
    from llmlab.peft.model import apply_adapter

    pm = get_peft_model(tiny_model(), "prefix", num_virtual_tokens=3)
    pm.save_adapter(tmp_path / "ad")

    class Lm:
        model = tiny_model()

    class Tok:
        eos_id = None

        def decode_bytes(self, ids):  # noqa: ANN001, ANN201
            return " ".join(map(str, ids)).encode()

    lm = apply_adapter(Lm(), tmp_path / "ad")
    out = complete(lm.model, Tok(), [[5, 17, 3]], SamplingParams(max_new_tokens=4,
                                                                 temperature=0))[0]
    assert out.token_ids == _greedy(pm.eval(), [[5, 17, 3]], 4)[0][0].tolist()
