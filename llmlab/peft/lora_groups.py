"""The eager fast path's bookkeeping: LoRA layers grouped by input, and their casts.

`PeftModel.forward` calls `refresh_casts` before an eager mixed-precision forward, which
keeps every LoRA layer's compute-dtype casts current (`CastStore`, peft/lora_fast.py). The
layers that read one input (q, k, v; gate, up) form a `LoraGroup`, run as one
`LoraGroupFn` by whichever member is called first.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from llmlab.peft.lora import LoraLinear
from llmlab.peft.lora_fast import _TREE_GEN, CastStore, LoraGroupFn, bump_tree_gen, shared_cast

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class LoraGroup:
    """The LoRA layers of one module that read the same input (q, k, v; gate, up), run as
    one `LoraGroupFn` in eager mixed-precision training. Each member holds the group
    (`LoraLinear.group`): the first one called computes every member's output in one
    product and keeps the others' for them, which take theirs when given the same input.
    Where the group does not apply (compiling, no autocast, dropout, a merged or disabled
    layer, casts not yet made) each layer computes on its own. Not a module: it adds no
    parameters or state."""

    def __init__(self, parent: nn.Module, names: tuple[str, ...]) -> None:
        self.parent, self.names = parent, names
        self.bufs: tuple | None = None  # set by CastStore
        self.kept: tuple[torch.Tensor, int, list[torch.Tensor]] | None = None  # x, version, ys

    def members(self) -> list[Any]:
        """The parent's layers by name now (None where one is gone, e.g. after a merge)."""
        return [getattr(self.parent, n, None) for n in self.names]

    def eligible(self) -> bool:
        """Layers that can be stacked: plain (not NF4) bases of one input size, all with a
        bias or none, one scale, no DoRA."""
        ms = self.members()
        if not all(isinstance(m, LoraLinear) and m.group is self for m in ms):
            return False
        bases = [m.base_layer for m in ms]  # type: ignore[union-attr]
        return (all(isinstance(b, nn.Linear) for b in bases)
                and len({b.in_features for b in bases}) == 1
                and len({b.bias is None for b in bases}) == 1
                and len({m.scaling for m in ms}) == 1  # type: ignore[union-attr]
                and not any(m.use_dora for m in ms))  # type: ignore[union-attr]

    def __deepcopy__(self, memo: dict) -> LoraGroup:
        new = copy.copy(self)
        memo[id(self)] = new  # before the parent: its members hold this group too
        new.parent, new.bufs, new.kept = copy.deepcopy(self.parent, memo), None, None
        return new

    def output(self, i: int, x: torch.Tensor) -> torch.Tensor | None:
        """Member i's output from the group's one product; None: compute it alone."""
        if i == 0:
            y = self._run(x)
            if y is None:
                self.kept = None
                return None
            first, *rest = y.split([d for _, d, _, _ in self.bufs[1]], dim=-1)  # type: ignore[index]
            self.kept = (x, x._version, rest)
            return first
        kept = self.kept
        if kept is None or kept[0] is not x or kept[1] != x._version:
            return None
        if i == len(self.names) - 1:
            self.kept = None  # the last member: let go of x and the outputs
        return kept[2][i - 1]

    def _run(self, x: torch.Tensor) -> torch.Tensor | None:
        dev = x.device.type
        if self.bufs is None or not torch.is_autocast_enabled(dev):
            return None
        dt = torch.get_autocast_dtype(dev)
        ms = self.members()
        for m in ms:
            if not isinstance(m, LoraLinear) or m.merged or m.disabled or m.use_dora or (
                    m.training and not isinstance(m._modules["lora_dropout"], nn.Identity)) \
                    or m._current_casts(dt) is None:
                return None
        bufs, blocks, scaling, ids = self.bufs  # the current casts' store (in `dt`) set them
        if ids != tuple(id(m) for m in ms):
            return None
        ab = [m.lora_A.weight for m in ms] + [m.lora_B.weight for m in ms]  # type: ignore[union-attr]
        x16 = shared_cast(x, dt)
        with torch.autocast(dev, enabled=False):
            return LoraGroupFn.apply(x, x16, bufs, blocks, scaling, *ab)


def install_groups(model: nn.Module) -> None:
    """Make each module's q, k, v (or gate, up) a LoraGroup where all are LoRA layers."""
    bump_tree_gen()
    for mod in model.modules():
        if getattr(mod, "cross", False):  # cross-attention: k, v read the encoder output
            continue
        for names in GROUPS:
            ms = [getattr(mod, n, None) for n in names]
            if all(isinstance(m, LoraLinear) for m in ms):
                group = LoraGroup(mod, names)
                for i, m in enumerate(ms):
                    m.group, m.group_index = group, i


def remove_groups(model: nn.Module) -> None:
    bump_tree_gen()
    for mod in model.modules():
        if isinstance(mod, LoraLinear):
            mod.group = None


def lora_groups(modules: Iterable[nn.Module]) -> list[LoraGroup]:
    """The groups of these modules (`model.modules()`), each found at its first member."""
    return [m.group for m in modules
            if isinstance(m, LoraLinear) and m.group is not None and m.group_index == 0]


def refresh_casts(model: nn.Module, dtype: torch.dtype) -> None:
    """Make every LoRA layer's compute-dtype casts current (`CastStore`): called before an
    eager mixed-precision forward. Costs a few kernels after an optimizer step (or the first
    time), and none otherwise. The price is a `dtype` copy of each frozen Linear weight
    (NF4 bases are not copied: they are dequantised as before).

    The store holds every non-DoRA LoRA layer, merged, disabled or not: those flags are
    checked where the casts are used, so toggling them (a DPO reference forward) costs no
    rebuild. The model is walked again only when its module tree may have changed."""
    store = model.__dict__.get("_lora_cast_store")
    if store is not None and store.gen == _TREE_GEN[0] and store.dtype == dtype \
            and store.refresh():
        return
    gen = _TREE_GEN[0]
    lora = [m for m in model.modules() if isinstance(m, LoraLinear)]
    layers = [m for m in lora if not m.use_dora]
    if not layers:
        return
    every = lora_groups(lora)
    groups = [g for g in every if g.eligible()]
    if store is None or store.key != CastStore.structure(layers, groups, dtype):
        for g in every:  # a group's buffers only ever come from the current store
            g.bufs = None
        store = CastStore(layers, groups, dtype)
        model.__dict__["_lora_cast_store"] = store
    store.gen = gen
    if not store.refresh():  # moved between the walk and now? the next call rebuilds
        store.gen = -1
