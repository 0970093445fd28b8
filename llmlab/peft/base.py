"""`PeftModel`: a Transformer with an adapter injected in place, and `disable_adapters`.

`PeftModel.state_dict()` holds only the trained tensors, so the shared training loop's
checkpoints, resume and export stay small and unchanged. Files follow PEFT's format exactly:
`adapter_config.json` + `adapter_model.safetensors` whose keys are ours prefixed with
`base_model.model.` (our module names are HF Llama's), e.g.
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.

Building one (`get_peft_model`) and loading one from files (`load_adapter`) are in
peft/model.py; the prompt, prefix and bottleneck kinds in peft/methods.py.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmlab.peft.lora import LoraLinear, merge_and_unload
from llmlab.peft.lora_fast import clear_shared_cast
from llmlab.peft.lora_groups import refresh_casts
from llmlab.peft.nf4 import NF4Linear
from llmlab.settings import speed
from llmlab.weights.io import atomic_dir, save_safetensors

PEFT_PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TEMPLATE_FILE = "chat_template.jinja"


class PeftModel(nn.Module):
    """Wraps a Transformer whose adapter modules were injected in place."""

    def __init__(self, model: nn.Module, method: str, config: dict[str, Any]) -> None:
        super().__init__()
        self.base_model, self.method, self.peft_config = model, method, config
        self.quantized_bytes = 0

    @property
    def cfg(self) -> Any:
        return self.base_model.cfg

    @property
    def device(self) -> torch.device:
        return self.base_model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base_model.dtype

    def forward(self, *args: Any, **kw: Any) -> Any:
        dev = self.device.type
        if (self.method in ("lora", "qlora") and torch.is_autocast_enabled(dev)
                and not torch.compiler.is_compiling()
                and not self.__dict__.get("_blocks_compiled")
                # buffers made in inference mode could never be saved for a backward
                and not torch.is_inference_mode_enabled()
                and speed.lora_fast):  # opt-out, to compare
            refresh_casts(self.base_model, torch.get_autocast_dtype(dev))
            try:
                return self.base_model(*args, **kw)
            finally:
                clear_shared_cast()  # drop the last layer input it holds
        return self.base_model(*args, **kw)

    # ------------------------------------------------------------------ state: adapter only

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in self.base_model.named_parameters() if p.requires_grad}

    def state_dict(self, *args: Any, **kw: Any) -> dict[str, Any]:  # type: ignore[override]
        return {k: v.clone() for k, v in self.adapter_state().items()}

    def load_state_dict(self, sd: dict[str, Any], strict: bool = True,  # type: ignore[override]
                        assign: bool = False) -> Any:
        own = dict(self.base_model.named_parameters())
        want = set(self.adapter_state())
        missing = sorted(want - set(sd))
        unexpected = sorted(set(sd) - want)
        if strict and (missing or unexpected):
            raise ValueError(f"adapter weights don't fit: missing {missing}, "
                             f"unexpected {unexpected}")
        with torch.no_grad():
            for k in set(sd) & want:
                if own[k].shape != sd[k].shape:
                    raise ValueError(f"adapter weight {k}: shape {tuple(sd[k].shape)}, model "
                                     f"expects {tuple(own[k].shape)}")
                own[k].copy_(sd[k])
        return nn.modules.module._IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------ accounting

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, all) as PEFT counts them: shared weights once; a 4-bit weight by its
        logical number of elements."""
        seen: set[int] = set()
        trainable = total = 0
        for p in self.base_model.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
        for m in self.base_model.modules():
            if isinstance(m, NF4Linear):
                total += m.in_features * m.out_features
        return trainable, total

    def trainable_summary(self) -> str:
        """The line PEFT's `print_trainable_parameters` prints."""
        t, a = self.parameter_counts()
        return f"trainable params: {t:,d} || all params: {a:,d} || trainable%: {100 * t / a:.4f}"

    def print_trainable_parameters(self) -> None:
        print(self.trainable_summary())

    # ------------------------------------------------------------------ files

    def save_adapter(self, out: str | Path, chat_template: str | None = None) -> Path:
        """PEFT's files (atomically), plus model.safetensors with our names for resume, and
        the chat template the adapter was trained with, if not the base model's (as
        transformers names it: chat_template.jinja)."""
        sd = {k: v.contiguous().cpu() for k, v in self.adapter_state().items()}
        with atomic_dir(out) as tmp:
            save_safetensors({_to_peft_key(k, self.method): v for k, v in sd.items()},
                             tmp / WEIGHTS_FILE)
            (tmp / CONFIG_FILE).write_text(json.dumps(self.peft_config, indent=2) + "\n")
            save_safetensors(sd, tmp / "model.safetensors")
            if chat_template is not None:
                (tmp / TEMPLATE_FILE).write_text(chat_template, encoding="utf-8")
        return Path(out)

    def disable_adapters(self) -> contextlib.AbstractContextManager[None]:
        """`with pm.disable_adapters():` runs the base model (PEFT's `disable_adapter()`)."""
        return disable_adapters(self)

    def merge_and_unload(self) -> nn.Module:
        if self.method not in ("lora", "dora", "qlora"):
            raise ValueError(f"only LoRA-family adapters merge into the weights, not "
                             f"{self.method}")
        return merge_and_unload(self.base_model)


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[None]:
    """Inside the block, `model` computes as its base model: every adapter in it (LoRA,
    DoRA, QLoRA, prompt, prefix, bottleneck) is bypassed, and merged LoRA layers are unmerged
    for the duration. `model` may wrap the adapted model (DDP, a value head). This is the
    DPO/PPO/GRPO reference without a second copy of the weights."""
    # Every adapter module (LoraLinear; WithAdapter and the prompt/prefix models of
    # peft/methods.py) carries this flag.
    mods = [m for m in model.modules() if "disabled" in m.__dict__]
    if not mods:
        raise ValueError(f"{type(model).__name__} has no adapters to disable; use a frozen "
                         "reference copy instead")
    before = [m.disabled for m in mods]
    merged = [m for m in mods if isinstance(m, LoraLinear) and m.merged]
    for m in merged:
        m.unmerge()
    for m in mods:
        m.disabled = True
    try:
        yield
    finally:
        for m, b in zip(mods, before, strict=True):
            m.disabled = b
        for m in merged:
            m.merge()


def _to_peft_key(k: str, method: str) -> str:
    # PEFT stores prompt/prefix embeddings under their bare name, everything else prefixed.
    return "prompt_embeddings" if method in ("prompt", "prefix") else PEFT_PREFIX + k


