"""A Transformer with an adapter: trainable-parameter accounting, PEFT-format save and load.

`PeftModel.state_dict()` holds only the trained tensors, so the shared training loop's
checkpoints, resume and export stay small and unchanged. Files follow PEFT's format exactly:
`adapter_config.json` + `adapter_model.safetensors` whose keys are ours prefixed with
`base_model.model.` (our module names are HF Llama's), e.g.
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmlab.peft.lora import (
    LoraConfig,
    LoraLinear,
    inject_lora,
    merge_and_unload,
    refresh_casts,
    target_names,
)
from llmlab.peft.lora_fast import clear_shared_cast
from llmlab.peft.nf4 import NF4Linear, quantize_model

PEFT_PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TEMPLATE_FILE = "chat_template.jinja"
METHODS = ("lora", "dora", "qlora", "prompt", "prefix", "adapter")
PEFT_TYPES = {"lora": "LORA", "dora": "LORA", "qlora": "LORA", "prompt": "PROMPT_TUNING",
              "prefix": "PREFIX_TUNING", "adapter": "BOTTLENECK_ADAPTER"}


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
                and os.environ.get("LLMLAB_LORA_FAST", "1") != "0"):  # opt-out, to compare
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
        from llmlab.weights.io import atomic_dir, save_safetensors

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
    from llmlab.peft.methods import PrefixTuning, PromptTuning, WithAdapter

    kinds = (LoraLinear, WithAdapter, PromptTuning, PrefixTuning)
    mods = [m for m in model.modules() if isinstance(m, kinds)]
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


def _lora_peft_config(model: nn.Module, lc: LoraConfig, names: list[str],
                      base_name: str | None) -> dict[str, Any]:
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    # Short names when they select exactly the same modules; else the full names (as PEFT).
    targets = leaves if sorted(target_names(model, leaves)) == sorted(names) else sorted(names)
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
            "r": lc.r, "lora_alpha": lc.lora_alpha, "lora_dropout": lc.lora_dropout,
            "target_modules": targets, "use_rslora": lc.use_rslora, "use_dora": lc.use_dora,
            "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
            "init_lora_weights": True, "modules_to_save": None, "rank_pattern": {},
            "alpha_pattern": {}}


def get_peft_model(model: nn.Module, method: str, base_name: str | None = None,
                   **opts: Any) -> PeftModel:
    """Freeze `model` and add a trainable adapter. opts: LoraConfig fields for lora/dora/
    qlora; num_virtual_tokens for prompt/prefix; bottleneck for adapter."""
    if method not in METHODS:
        raise ValueError(f"unknown PEFT method {method!r}; valid: {', '.join(METHODS)}")
    if method in ("lora", "dora", "qlora"):
        lc = LoraConfig(**{**opts, "use_dora": method == "dora" or opts.get("use_dora", False)})
        lc.validate()
        names = target_names(model, lc.target_modules)
        qbytes = 0
        if method == "qlora":
            # QLoRA quantises every Linear of the blocks (not only LoRA's targets).
            qbytes = quantize_model(model, target_names(model, "all-linear"))
        pcfg = _lora_peft_config(model, lc, names, base_name)  # before the modules change
        inject_lora(model, lc)
        pm = PeftModel(model, method, pcfg)
        pm.quantized_bytes = qbytes
        return pm
    from llmlab.peft import methods

    return methods.build(model, method, base_name, **opts)


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    path = Path(adapter_dir) / CONFIG_FILE
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: not found; an adapter dir holds {CONFIG_FILE} and "
                         f"{WEIGHTS_FILE}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(cfg, dict) or "peft_type" not in cfg:
        raise ValueError(f"{path}: field 'peft_type' is missing")
    return cfg


def _unsupported(path: Path, cfg: dict[str, Any]) -> None:
    checks = {"bias": ("none", None), "fan_in_fan_out": (False, None),
              "modules_to_save": (None,), "rank_pattern": ({}, None),
              "alpha_pattern": ({}, None), "layers_to_transform": (None,)}
    for k, ok in checks.items():
        if cfg.get(k, ok[0]) not in ok:
            raise ValueError(f"{path}: field {k!r}={cfg[k]!r} is not supported by llmlab")


def load_adapter(model: nn.Module, adapter_dir: str | Path, quantize: bool = False
                 ) -> PeftModel:
    """Add the adapter saved in `adapter_dir` (by llmlab or by PEFT) to `model`."""
    adir = Path(adapter_dir)
    cfg = read_adapter_config(adir)
    ptype = cfg["peft_type"]
    if ptype == "LORA":
        _unsupported(adir / CONFIG_FILE, cfg)
        opts = {"r": cfg.get("r", 8), "lora_alpha": cfg.get("lora_alpha", 8),
                "lora_dropout": cfg.get("lora_dropout", 0.0),
                "target_modules": cfg.get("target_modules") or ["q_proj", "v_proj"],
                "use_rslora": cfg.get("use_rslora", False)}
        method = "qlora" if quantize else "dora" if cfg.get("use_dora") else "lora"
        pm = get_peft_model(model, method, cfg.get("base_model_name_or_path"), **opts)
    else:
        from llmlab.peft import methods

        pm = methods.from_config(model, adir / CONFIG_FILE, cfg)
    from llmlab.weights.io import load_safetensors

    raw = load_safetensors(adir / WEIGHTS_FILE)
    sd = {}
    for k, v in raw.items():
        k = k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k
        sd[_from_peft_key(k, pm)] = v
    try:
        pm.load_state_dict(sd)
    except ValueError as e:
        raise ValueError(f"{adir / WEIGHTS_FILE}: {e}") from None
    return pm


def _from_peft_key(k: str, pm: PeftModel) -> str:
    if k == "prompt_embeddings":
        return next(n for n in pm.adapter_state() if n.endswith("prompt_embeddings"))
    return k


def apply_adapter(lm: Any, adapter_dir: str | Path, merge: bool = True) -> Any:
    """Put an adapter on a loaded model (`llmlab.load(...)`) for generate/chat.

    LoRA and DoRA are merged into the weights (no inference cost); other adapters wrap the
    model. Returns `lm`, modified in place."""
    pm = load_adapter(lm.model, adapter_dir)
    adopt_template(lm, adapter_dir)
    pm.eval()
    if merge and pm.method in ("lora", "dora"):
        lm.model = pm.merge_and_unload()
    else:
        lm.model = pm
    for p in lm.model.parameters():
        p.requires_grad_(False)
    return lm


def adopt_template(lm: Any, adapter_dir: str | Path) -> str | None:
    """Make the chat template an adapter was trained with (SFT --chat-template) the model's;
    returns it (Jinja), or None if the adapter has none of its own."""
    f = Path(adapter_dir) / TEMPLATE_FILE
    if not f.is_file():
        return None
    from llmlab.generate.chat import parse_template, set_template

    src = f.read_text(encoding="utf-8")
    if parse_template(src) is None:
        warnings.warn(f"{f}: not a chat template llmlab reads (ChatML or its own); chat "
                      "uses the base model's", stacklevel=2)
        return None
    set_template(lm, src)
    return src


def lora_modules(model: nn.Module) -> list[LoraLinear]:
    return [m for m in model.modules() if isinstance(m, LoraLinear)]


def lora_config_dict(lc: LoraConfig) -> dict[str, Any]:
    return asdict(lc)
