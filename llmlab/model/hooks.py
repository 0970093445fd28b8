"""Read or replace activations inside the stack while a model runs: the logit lens, ablation
and activation patching (llmlab/explain/) are all built on this.

    with intervene(model, {("resid", 3): seen.append}):       # read: return None
        model(ids)
    with intervene(model, {("head", 5): lambda z: z * keep}):  # write: return the new tensor
        model(ids)

A site names one activation of the decoder (or only) stack:
    ("resid", l)  the residual stream entering block l, (B, T, d); l = n_layer is the output
                  of the last block, before the final norm
    ("attn", l)   block l's attention output (after o_proj), what it adds to the stream
    ("mlp", l)    block l's MLP output
    ("head", l)   block l's per-head attention outputs before o_proj, (B, T, H, head_dim):
                  o_proj mixes them, so zeroing head h here removes exactly head h

Torch's module hooks do the work, so the model's forward stays the plain one and an unused
site costs nothing; the hooks are removed on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

Site = tuple[str, int]
Edit = Callable[[torch.Tensor], torch.Tensor | None]
KINDS = ("resid", "attn", "mlp", "head")


def check_site(model: nn.Module, site: Site) -> None:
    kind, layer = site
    n = len(model.model.layers)
    top = n if kind == "resid" else n - 1
    if kind not in KINDS:
        raise ValueError(f"site: kind must be one of {KINDS}, got {kind!r}")
    if not 0 <= layer <= top:
        raise ValueError(f"site: layer must be in [0, {top}] for {kind!r}, got {layer}")


def _on_output(edit: Edit) -> Callable[..., Any]:
    def hook(_m: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        return edit(out)

    return hook


def _on_input(edit: Edit, heads: int | None = None) -> Callable[..., Any]:
    def hook(_m: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        if heads is not None:  # o_proj's input: (B, T, H * hd) seen as (B, T, H, hd)
            new = edit(x.unflatten(-1, (heads, -1)))
            new = None if new is None else new.flatten(-2)
        else:
            new = edit(x)
        return None if new is None else (new, *args[1:])

    return hook


@contextmanager
def intervene(model: nn.Module, edits: dict[Site, Edit]) -> Iterator[None]:
    """Call `edits[site](activation)` at each site during forward passes; a returned tensor
    replaces the activation (same shape), None leaves it as it was."""
    layers = model.model.layers
    handles = []
    try:
        for site, edit in edits.items():
            check_site(model, site)
            kind, i = site
            if kind == "resid" and i < len(layers):
                handles.append(layers[i].register_forward_pre_hook(_on_input(edit)))
            elif kind == "resid":
                handles.append(layers[i - 1].register_forward_hook(_on_output(edit)))
            elif kind == "attn":
                handles.append(layers[i].self_attn.register_forward_hook(_on_output(edit)))
            elif kind == "mlp":
                handles.append(layers[i].mlp.register_forward_hook(_on_output(edit)))
            else:
                attn = layers[i].self_attn
                hook = _on_input(edit, heads=attn.n_head)
                handles.append(attn.o_proj.register_forward_pre_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def capture(model: nn.Module, sites: list[Site]) -> tuple[dict[Site, torch.Tensor], Any]:
    """(store, edits): run the model under `intervene(model, edits)` and `store[site]` holds
    each site's activation (detached; the last pass wins)."""
    store: dict[Site, torch.Tensor] = {}

    def keep(site: Site) -> Edit:
        def f(x: torch.Tensor) -> None:
            store[site] = x.detach()

        return f

    return store, {s: keep(s) for s in sites}
