"""LoRA and DoRA on our Transformer's Linear layers (QLoRA when the base is NF4).

LoRA (Hu et al. 2021): y = W x + s * B A dropout(x), A (r, d_in) kaiming-uniform(a=sqrt 5)
as PEFT initialises it, B (d_out, r) zeros, so training starts at the base model exactly;
s = alpha / r, or alpha / sqrt(r) with rsLoRA (Kalajdzievski 2023).

DoRA (Liu et al. 2024): W' = m * (W + s B A) / ||W + s B A||, the norm taken per output
feature (over each row of the (d_out, d_in) weight, PEFT's `torch.linalg.norm(w, dim=1)`),
m initialised to ||W|| so again training starts at the base. As in the paper (sec. 4.3) and
PEFT, the norm is detached: it is treated as a constant in the backward pass.

Training runs `LoraFn` (peft/lora_fast.py), written for speed and memory: the scale is folded
into an in-place addmm (no (N, d_out) temporaries), the frozen weight is not saved for
backward (for NF4 it is dequantised again there), and dropout makes a copy of x only when
p > 0. Eager mixed-precision training through `PeftModel` adds the launch-saving path there:
casts kept per optimizer step and q/k/v and gate/up grouped (peft/lora_groups.py).

Module and parameter names are PEFT's (`q_proj.base_layer`, `q_proj.lora_A.weight`,
`q_proj.lora_magnitude_vector`) so adapter keys map to PEFT's files by a fixed prefix.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.peft.lora_fast import _OPT_STEPS, LoraFn, shared_cast
from llmlab.peft.nf4 import NF4Linear, compute_dtype

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    # A list of names (a module matches when its name is one, or ends with ".name"), a
    # regex string (full match, as PEFT), or "all-linear" (every Linear except lm_head).
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "v_proj"])
    use_rslora: bool = False
    use_dora: bool = False

    def validate(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora r must be >= 1, got {self.r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


def _weight(base: nn.Module, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The base layer's (d_out, d_in) weight in full precision (dequantised for NF4)."""
    w = base.dequantize() if isinstance(base, NF4Linear) else base.weight
    return w if dtype is None else w.to(dtype)


def _stored_dtype(base: nn.Module) -> torch.dtype:
    return base.dtype if isinstance(base, NF4Linear) else base.weight.dtype


class LoraLinear(nn.Module):
    """A frozen base Linear (or NF4Linear) plus a trained low-rank update."""

    def __init__(self, base: nn.Module, cfg: LoraConfig) -> None:
        super().__init__()
        self.base_layer = base
        d_in, d_out = base.in_features, base.out_features
        self.in_features, self.out_features = d_in, d_out
        self.r, self.scaling, self.use_dora = cfg.r, cfg.scaling, cfg.use_dora
        w = _weight(base)
        self.lora_A = nn.Linear(d_in, cfg.r, bias=False, device=w.device, dtype=torch.float32)
        self.lora_B = nn.Linear(cfg.r, d_out, bias=False, device=w.device, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(cfg.lora_dropout) if cfg.lora_dropout else nn.Identity()
        if cfg.use_dora:
            with torch.no_grad():
                norm = torch.linalg.norm(w.float(), dim=1)
            self.lora_magnitude_vector = nn.Parameter(norm)
        self.merged = False
        self.disabled = False  # set by disable_adapters (peft/base.py): the base layer alone
        self.group: Any = None  # its LoraGroup (peft/lora_groups.py), if it has siblings
        self.group_index = 0
        # (key, A, sB, W) in the compute dtype, kept by refresh_casts: see there.
        self._casts: tuple[tuple, torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        for p in base.parameters():
            p.requires_grad_(False)

    def _cast_key(self, dtype: torch.dtype) -> tuple:
        """What the cached casts depend on. An in-place change (a merge, a loaded state, a
        plain optimizer) bumps a tensor's version, but a fused optimizer's step does not, so
        the count of optimizer steps taken in this process is part of the key too."""
        # Read through the module dicts: nn.Module.__getattr__ costs ~1 us a name, and this
        # runs for every layer several times a step.
        mods = self._modules
        a, b = mods["lora_A"]._parameters["weight"], mods["lora_B"]._parameters["weight"]
        base = mods["base_layer"]
        w = None if isinstance(base, NF4Linear) else base._parameters["weight"]
        return (dtype, a.device, a._version, b._version, _OPT_STEPS[0], self.scaling,
                None if w is None else (w._version, w.data_ptr()))

    def _current_casts(self, dtype: torch.dtype
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        c = self._casts
        if c is None or c[0] != self._cast_key(dtype):
            return None
        return c[1], c[2], c[3]

    def delta_weight(self) -> torch.Tensor:
        """s * B A, (d_out, d_in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def _dora_scale(self, w: torch.Tensor) -> torch.Tensor:
        """m / ||W + s B A|| per output feature, the norm detached (PEFT, DoRA sec. 4.3)."""
        norm = torch.linalg.norm(w.float() + self.delta_weight(), dim=1).detach()
        return self.lora_magnitude_vector / norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = self.group
        if group is not None and not torch.compiler.is_compiling():
            y = group.output(self.group_index, x)
            if y is not None:
                return y
        if not (self.merged or self.disabled or self.use_dora):
            a, b = self.lora_A.weight, self.lora_B.weight
            dt = compute_dtype(x, _stored_dtype(self.base_layer))
            # Without autocast the fused path computes in one dtype; mixed dtypes (a bf16 base
            # under fp32 adapters) take the plain path below, which upcasts x as PEFT does.
            if torch.is_autocast_enabled(x.device.type) or x.dtype == dt == a.dtype == b.dtype:
                # No dropout: None, not x again (dynamo cannot trace an autograd.Function
                # given one tensor twice; it would break the graph at every LoRA layer).
                drop = self.training and not isinstance(self.lora_dropout, nn.Identity)
                xd = self.lora_dropout(x) if drop else None
                casts = None if torch.compiler.is_compiling() else self._current_casts(dt)
                x16 = None if casts is None else shared_cast(x, dt)
                with torch.autocast(x.device.type, enabled=False):
                    return LoraFn.apply(x, xd, a, b, self.base_layer, self.scaling, dt, casts,
                                        x16)
        result = self.base_layer(x)
        if self.merged or self.disabled:  # merged: the update is in the base weight already
            return result
        a, b = self.lora_A, self.lora_B
        xd = self.lora_dropout(x)
        lora = b(a(xd.to(a.weight.dtype)))  # fp32 adapters, whatever the base dtype
        if not self.use_dora:
            return result + (lora * self.scaling).to(result.dtype)
        w = _weight(self.base_layer)
        scale = self._dora_scale(w)
        # (m/||.|| - 1) W x + m/||.|| s B A x: the base output is reused; W x excludes bias.
        bias = getattr(self.base_layer, "bias", None)
        base_out = result - bias if bias is not None else result
        if not isinstance(self.lora_dropout, nn.Identity):
            base_out = F.linear(xd, w.to(xd.dtype))
        dora = (scale - 1) * base_out + scale * lora * self.scaling
        return result + dora.to(result.dtype)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        w = _weight(self.base_layer).float()
        if self.use_dora:
            return self._dora_scale(w)[:, None] * (w + self.delta_weight())
        return w + self.delta_weight()

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (inference: no extra matmuls)."""
        if self.merged:
            return
        if isinstance(self.base_layer, NF4Linear):
            raise ValueError("cannot merge into a 4-bit base in place; use merge_and_unload")
        w = self.base_layer.weight
        self._orig = w.detach().clone() if self.use_dora else None
        w.copy_(self.merged_weight().to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        w = self.base_layer.weight
        if self._orig is not None:  # DoRA's merge is not additive; keep the original
            w.copy_(self._orig)
        else:
            w.sub_(self.delta_weight().to(w.dtype))
        self.merged = False


def target_names(model: nn.Module, targets: list[str] | str) -> list[str]:
    """Names of the Linear modules LoRA wraps, by PEFT's matching rules."""
    names = []
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Linear, NF4Linear)) or name.split(".")[-1] == "lm_head":
            continue
        if targets == "all-linear":
            ok = True
        elif isinstance(targets, str):
            ok = re.fullmatch(targets, name) is not None
        else:
            ok = any(name == t or name.endswith("." + t) for t in targets)
        if ok:
            names.append(name)
    if not names:
        raise ValueError(f"target_modules {targets!r} matched no Linear layer; names look like "
                         f"'model.layers.0.self_attn.q_proj' (try {', '.join(LINEAR_NAMES)} "
                         "or all-linear)")
    return names


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def inject_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Freeze the model and wrap each target Linear in a LoraLinear, in place."""
    cfg.validate()
    names = target_names(model, cfg.target_modules)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        _set(model, name, LoraLinear(model.get_submodule(name), cfg))
    return names


@torch.no_grad()
def merge_and_unload(model: nn.Module) -> nn.Module:
    """Replace every LoraLinear with a plain Linear holding W + s B A (DoRA: m-rescaled)."""
    model.__dict__.pop("_lora_cast_store", None)
    for name, mod in list(model.named_modules()):
        if isinstance(mod, LoraLinear):
            base = mod.base_layer
            w = mod.merged_weight()
            bias = getattr(base, "bias", None)
            dtype = base.dtype if isinstance(base, NF4Linear) else base.weight.dtype
            lin = nn.Linear(mod.in_features, mod.out_features, bias=bias is not None,
                            device=w.device, dtype=dtype)
            lin.weight.copy_(w.to(dtype))
            if bias is not None:
                lin.bias.copy_(bias)
            _set(model, name, lin)
    return model
