"""LoRA's cached compute-dtype casts (`refresh_casts`): eager bf16 training with them is the
same, bit for bit, as casting in every layer; they follow every change of the weights (fused
optimizer steps, loads, in-place edits of the base); and PEFT gives the same first step."""

from __future__ import annotations

import copy

import peft
import pytest
import torch
import torch.nn.functional as F
import transformers
from peft_common import export_hf, randomize, tiny_model

from llmlab.model import ModelConfig, Transformer
from llmlab.peft.lora import LoraLinear
from llmlab.peft.lora_fast import CastStore, LoraFn, LoraGroupFn
from llmlab.peft.lora_groups import lora_groups, remove_groups
from llmlab.peft.model import get_peft_model
from llmlab.settings import speed

IDS = torch.randint(0, 96, (2, 33), generator=torch.Generator().manual_seed(0))
BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def _lora(method: str = "lora") -> torch.nn.Module:
    pm = get_peft_model(tiny_model(), method, r=4, lora_alpha=8, target_modules="all-linear")
    randomize(pm)
    return pm.train()


def _loss(call, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.autocast(**BF16):
        logits = call(input_ids=ids[:, :-1]).logits
    return F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())


def _train(pm: torch.nn.Module, call, steps: int = 3) -> list[float]:
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2,
                            fused=True)  # a fused step does not bump the params' versions
    losses = []
    for _ in range(steps):
        loss = _loss(call)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def _spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[bool]]:
    """Which autograd function ran each forward: per layer (with casts or not) or grouped."""
    calls: dict[str, list[bool]] = {"layer": [], "group": []}
    layer, group = LoraFn.forward, LoraGroupFn.forward

    def spy_layer(ctx, *args):
        calls["layer"].append(args[7] is not None)  # casts given
        return layer(ctx, *args)

    def spy_group(ctx, *args):
        calls["group"].append(True)
        return group(ctx, *args)

    monkeypatch.setattr(LoraFn, "forward", staticmethod(spy_layer))
    monkeypatch.setattr(LoraGroupFn, "forward", staticmethod(spy_group))
    return calls


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_cached_casts_train_exactly_like_per_layer_casts(method, monkeypatch):
    calls = _spy(monkeypatch)
    pm = _lora(method)
    remove_groups(pm)  # grouping sums in another order; this test is about the casts alone
    twin = copy.deepcopy(pm)
    got = _train(pm, pm)  # PeftModel.forward refreshes the casts
    n = len(calls["layer"])
    want = _train(twin, twin.base_model)  # the inner model: never refreshed, casts per layer
    assert n == 3 * 14 and all(calls["layer"][:n]) and not any(calls["layer"][n:])
    assert not calls["group"]
    assert got == want and len(set(got)) == 3  # the adapters moved, and alike
    for (k, p), (_, q) in zip(pm.named_parameters(), twin.named_parameters(), strict=True):
        assert torch.equal(p, q), k


def test_grouped_layers_train_like_separate_ones(monkeypatch):
    """q/k/v and gate/up as one LoraGroupFn each (o and down alone), against every layer
    alone: the same gradients and training to bf16 rounding (sums run in another order)."""
    calls = _spy(monkeypatch)
    pm = _lora()
    twin = copy.deepcopy(pm)
    _loss(pm).backward()
    assert len(calls["group"]) == 2 * 2 and len(calls["layer"]) == 2 * 2
    _loss(twin.base_model).backward()
    assert len(calls["group"]) == 2 * 2 and len(calls["layer"]) == 2 * 2 + 14
    for (k, p), (_, q) in zip(pm.named_parameters(), twin.named_parameters(), strict=True):
        if p.requires_grad:
            assert (p.grad - q.grad).norm() < 0.03 * q.grad.norm(), k
            p.grad = q.grad = None
    got, want = _train(pm, pm), _train(twin, twin.base_model)
    for a, b in zip(got, want, strict=True):
        assert abs(a - b) < 2e-3 * abs(b)


def test_gpt2_grouped_bf16_step_matches_separate_layers(monkeypatch):
    calls = _spy(monkeypatch)
    pm = _gpt2_lora()
    twin = copy.deepcopy(pm)
    _loss(pm).backward()
    _loss(twin.base_model).backward()
    assert len(calls["group"]) == 2  # q/k/v of each layer; o, up, down alone
    for (k, p), (_, q) in zip(pm.named_parameters(), twin.named_parameters(), strict=True):
        if p.requires_grad:
            assert (p.grad - q.grad).norm() < 0.03 * q.grad.norm(), k


def test_qlora_layers_are_not_grouped(monkeypatch):
    calls = _spy(monkeypatch)
    pm = _lora("qlora")
    _loss(pm).backward()
    assert not calls["group"] and len(calls["layer"]) == 14 and all(calls["layer"])


def _gpt2_lora() -> torch.nn.Module:
    """GPT-2 style: biases on q, k, v (stacked into the group's bias), a GELU MLP (no
    gate/up group)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=96, d_model=64, n_layer=2, n_head=4, max_seq_len=64,
                      pos="learned", norm="layernorm", mlp="gelu", d_ff=128, bias=True,
                      tie_embeddings=True)
    pm = get_peft_model(Transformer(cfg), "lora", r=4, lora_alpha=8,
                        target_modules="all-linear")
    randomize(pm)
    return pm.train()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_group_function_equals_separate_layers_in_fp32(arch):
    """LoraGroupFn's maths exactly (fp32, no autocast): output and every gradient against
    the three q/k/v layers (and gate/up) run one by one through LoraFn."""
    pm = _lora() if arch == "llama" else _gpt2_lora()
    layers = [m for m in pm.modules() if isinstance(m, LoraLinear)]
    groups = lora_groups(pm.modules())
    assert len(groups) == (4 if arch == "llama" else 2) and all(g.eligible() for g in groups)
    store = CastStore(layers, groups, torch.float32)
    store.refresh()
    x = torch.randn(2, 5, 64, requires_grad=True)
    for g in groups:
        ms = g.members()
        params = [m.lora_A.weight for m in ms] + [m.lora_B.weight for m in ms]
        bufs, blocks, scaling, _ = g.bufs
        assert (bufs[3] is not None) == (arch == "gpt2")  # the stacked q/k/v biases
        y = LoraGroupFn.apply(x, None, bufs, blocks, scaling, *params)
        w = torch.randn_like(y)
        got = torch.autograd.grad((y * w).sum(), [x, *params])
        ref = torch.cat([m(x) for m in ms], -1)  # fp32 LoraFn, no casts
        want = torch.autograd.grad((ref * w).sum(), [x, *params])
        assert (y - ref).abs().max() < 1e-5
        for a, b in zip(got, want, strict=True):
            assert a.shape == b.shape and (a - b).abs().max() < 1e-5 * (1 + b.abs().max())


def test_cached_casts_follow_loads_and_base_edits():
    pm = _lora()
    twin = copy.deepcopy(pm)
    _loss(pm)  # builds the casts
    g = torch.Generator().manual_seed(5)
    sd = {k: torch.randn(v.shape, generator=g) for k, v in pm.state_dict().items()}
    for m in (pm, twin):
        m.load_state_dict(sd)
        with torch.no_grad():  # an in-place edit of a frozen base weight
            m.base_model.get_submodule("model.layers.0.self_attn.q_proj").base_layer.weight.mul_(2)
    assert torch.equal(_loss(pm), _loss(twin.base_model))


def test_backward_after_an_optimizer_step_is_an_error_not_stale():
    """The casts are refreshed in place: a graph whose backward runs after the next step's
    refresh fails autograd's version check instead of using the new values silently."""
    pm = _lora()
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], fused=True)
    first = _loss(pm)
    _loss(pm).backward()
    opt.step()
    _loss(pm)  # refreshes the casts that `first` saved
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        first.backward()


def test_first_bf16_step_matches_peft(tmp_path):
    """bf16 autocast: our loss and adapter gradients against PEFT's, at bf16 tolerance."""
    base = tiny_model()
    hf_dir = export_hf(base, tmp_path / "hf")
    pm = get_peft_model(base, "lora", r=4, lora_alpha=8, target_modules="all-linear")
    randomize(pm)
    pm.train().save_adapter(tmp_path / "ad")
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    ref = peft.PeftModel.from_pretrained(hf, tmp_path / "ad", is_trainable=True).train()
    ours, theirs = _loss(pm), _loss(ref)
    ours.backward()
    theirs.backward()
    assert abs(ours.item() - theirs.item()) < 1e-2
    want = {k.removeprefix("base_model.model.").replace(".default", ""): p.grad
            for k, p in ref.named_parameters() if p.requires_grad}
    got = {k.removeprefix("base_model."): p.grad for k, p in pm.named_parameters()
           if p.requires_grad}
    assert sorted(got) == sorted(want)
    for k, gr in got.items():
        rel = (gr - want[k]).norm() / want[k].norm()
        assert rel < 0.05, (k, rel.item())


def test_groups_follow_disable_and_merge(monkeypatch):
    """The reference forward of DPO/PPO/GRPO (adapters disabled) and a merged model skip the
    grouped path and give the base's and the merged model's outputs; the adapted forward
    around them is unchanged."""
    calls = _spy(monkeypatch)
    pm = _lora()
    base = copy.deepcopy(pm.base_model)
    remove_groups(base)
    for m in base.modules():
        if isinstance(m, LoraLinear):
            m.disabled = True
    with torch.no_grad():
        adapted = _loss(pm)
        assert len(calls["group"]) == 4
        with pm.disable_adapters():
            assert torch.equal(_loss(pm), _loss(base))
        assert len(calls["group"]) == 4  # none while disabled
        assert torch.equal(_loss(pm), adapted)
        for m in pm.modules():
            if isinstance(m, LoraLinear):
                m.merge()
        merged = _loss(pm)
        assert len(calls["group"]) == 8 and abs(merged - adapted) < 1e-2 * adapted
        for m in pm.modules():
            if isinstance(m, LoraLinear):
                m.unmerge()
        assert abs(_loss(pm) - adapted) < 1e-3 * adapted
        assert len(calls["group"]) == 12


def test_inference_mode_first_then_training():
    """A rollout or sample generation (inference mode) before the first training forward,
    as in GRPO, must not leave cast buffers that a backward cannot save."""
    pm = _lora()
    with torch.inference_mode():
        _loss(pm)
    _train(pm, pm, steps=2)
    with torch.inference_mode():  # and between steps, with the casts stale
        _loss(pm)
    _train(pm, pm, steps=1)


def test_env_switch_turns_the_fast_path_off(monkeypatch):
    calls = _spy(monkeypatch)
    monkeypatch.setattr(speed, "lora_fast", False)
    pm = _lora()
    _loss(pm).backward()
    assert not calls["group"] and len(calls["layer"]) == 14 and not any(calls["layer"])


def test_store_walks_the_model_again_only_after_its_tree_changes(monkeypatch):
    """Steady state: no walk of the model per forward (milliseconds of host time on a real
    model), whatever the adapters' flags do; a layer put into the tree joins the store."""
    from llmlab.peft.lora import LoraConfig
    from llmlab.peft.lora_groups import LoraGroup

    calls = _spy(monkeypatch)
    walks = []
    eligible = LoraGroup.eligible
    monkeypatch.setattr(LoraGroup, "eligible", lambda g: walks.append(1) or eligible(g))
    pm = _lora()
    attn = pm.base_model.get_submodule("model.layers.1.self_attn")
    new = LoraLinear(attn.o_proj.base_layer, LoraConfig(r=2, lora_alpha=4))  # put in below
    _train(pm, pm, steps=2)
    first = len(walks)
    assert first == 4  # two layers, each a q/k/v and a gate/up group
    with torch.no_grad(), pm.disable_adapters():  # the DPO/GRPO reference forward
        _loss(pm)
    _train(pm, pm, steps=1)
    assert len(walks) == first and len(calls["group"]) == 3 * 4  # 3 steps; none while disabled
    # Another LoRA layer put in place: the next forward walks again and gives it casts.
    attn.o_proj = new
    n = len(calls["layer"])
    _train(pm, pm, steps=1)
    assert len(walks) == first + 4 and new._casts is not None
    assert all(calls["layer"][n:])  # every single layer (o, down) ran with cached casts
