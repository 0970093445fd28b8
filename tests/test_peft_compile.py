"""The compiled LoRA step (torch.compile, whole model or per block) against the eager step and
against PEFT's: same loss, same adapter gradients, one graph, no recompile on the next step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import peft
import pytest
import torch
import torch.nn.functional as F
import transformers
from peft_common import export_hf, randomize, tiny_model
from torch._dynamo.utils import counters

from llmlab.peft.model import get_peft_model
from llmlab.train.compiling import compile_model

# 2 x 40 tokens: 80 rows, so the LM head takes the oneDNN custom op under compile too.
IDS = torch.randint(0, 96, (2, 41), generator=torch.Generator().manual_seed(0))


def _step(model: torch.nn.Module, call: Callable[..., Any] | None = None,
          prefix: str = "base_model.") -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of one training step of `model` run through `call` (default: the
    model), the names without `prefix` (PEFT's wrapper adds one more level than ours) and
    PEFT's adapter name."""
    model.zero_grad(set_to_none=True)
    logits = (model if call is None else call)(input_ids=IDS[:, :-1]).logits
    loss = F.cross_entropy(logits.flatten(0, 1), IDS[:, 1:].flatten())
    loss.backward()
    return loss.item(), {k.removeprefix(prefix).replace(".default", ""): p.grad.clone()
                         for k, p in model.named_parameters() if p.requires_grad}


def _close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want) and len(got) == 2 * 2 * 7  # A, B x 7 linears x 2 layers
    for k, g in got.items():
        assert g.abs().sum() > 0, k
        assert (g - want[k]).abs().max() <= 1e-5 * (1 + want[k].abs().max()), k


@pytest.mark.parametrize("scope", ["regional", "whole"])
def test_compiled_lora_step_matches_eager_and_peft(tmp_path, scope):
    base = tiny_model()
    hf_dir = export_hf(base, tmp_path / "hf")
    pm = get_peft_model(base, "lora", r=4, lora_alpha=8, target_modules="all-linear")
    randomize(pm)  # non-zero B: gradients reach A, and x through the low-rank path
    pm.save_adapter(tmp_path / "ad")
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    ref = peft.PeftModel.from_pretrained(hf, tmp_path / "ad", is_trainable=True).train()
    pm.train()
    peft_loss, peft_grads = _step(ref, prefix="base_model.model.")

    # Compiled first, as in training: state the model builds on its first call (the RoPE
    # table) must not make the second step recompile.
    torch._dynamo.reset()
    counters.clear()
    fwd = compile_model(pm, scope)
    loss, grads = _step(pm, fwd)
    # LoraFn traced, not a graph break per layer; regional: the first block's input needs no
    # gradient (frozen embedding), the second's does, so two graphs of the same code.
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == (2 if scope == "regional" else 1)
    with torch._dynamo.config.patch(error_on_recompile=True):  # the next step reuses them
        loss2, grads2 = _step(pm, fwd)
    torch._dynamo.reset()
    eager_loss, eager_grads = _step(pm)

    assert loss == pytest.approx(eager_loss, rel=1e-6)
    assert loss == pytest.approx(peft_loss, rel=1e-5)
    assert loss2 == loss
    _close(grads, eager_grads)
    _close(grads, peft_grads)
    _close(grads2, grads)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_compiled_bf16_step_saves_no_copy_of_a_base_weight(method):
    """Under bf16 autocast the frozen weight is cast (or dequantised) for the forward's
    matmul and again in backward; compiled, the partitioner must not keep the forward's copy
    for backward instead (it did: a bf16 copy of every base weight per step). Gradients as
    eager (bf16 rounding)."""
    pm = get_peft_model(tiny_model(), method, r=4, lora_alpha=8, target_modules="all-linear")
    randomize(pm)
    pm.train()
    shapes = {tuple(m.base_layer.weight_shape if method == "qlora" else
                    m.base_layer.weight.shape) for n, m in pm.named_modules()
              if n.endswith("_proj") and hasattr(m, "base_layer")}
    assert len(shapes) >= 3
    saved: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(t.shape))
        return t

    def step(call: Callable[..., Any]) -> tuple[float, dict[str, torch.Tensor]]:
        with torch.autocast("cpu", dtype=torch.bfloat16), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            return _step(pm, call)

    want_loss, want = step(pm)
    torch._dynamo.reset()
    saved.clear()
    got_loss, got = step(compile_model(pm, "regional"))
    torch._dynamo.reset()
    assert saved and not shapes & set(saved)
    assert got_loss == pytest.approx(want_loss, rel=2e-3)
    for k, g in got.items():
        assert (g - want[k]).abs().max() <= 0.05 * want[k].abs().max(), k
