"""Adding an adapter to a Transformer (`get_peft_model`), and loading one from PEFT's
files (`load_adapter`, `apply_adapter`); the wrapped model itself is `PeftModel`
(peft/base.py)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from llmlab.peft import methods
from llmlab.peft.base import CONFIG_FILE, PEFT_PREFIX, TEMPLATE_FILE, WEIGHTS_FILE, PeftModel
from llmlab.peft.base import disable_adapters as disable_adapters  # callers import it here
from llmlab.peft.lora import LoraConfig, inject_lora, target_names
from llmlab.peft.lora_groups import install_groups
from llmlab.peft.nf4 import quantize_model
from llmlab.weights.io import load_safetensors

METHODS = ("lora", "dora", "qlora", "prompt", "prefix", "adapter")


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
        install_groups(model)  # for the eager fast path (peft/lora_groups.py)
        pm = PeftModel(model, method, pcfg)
        pm.quantized_bytes = qbytes
        return pm
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
        pm = methods.from_config(model, adir / CONFIG_FILE, cfg)
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
