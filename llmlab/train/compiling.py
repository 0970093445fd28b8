"""torch.compile of a model: the whole forward, or each transformer block on its own.

Regional compilation compiles the blocks one by one in place (`nn.Module.compile`). Every
block runs the same code, and dynamo treats a module's parameters as graph inputs, so the
first block's graph serves all of them: one compile instead of tracing the whole stack (on
the CPU at the SmolLM2-135M shape, 23 s instead of 110 s for a LoRA step; BENCHMARKS.md). A
second graph is compiled where a block's input differs in kind: under LoRA the first block
gets an input that needs no gradient (the embedding is frozen), the others one that does.
What lies between the blocks (embedding, final norm, LM head and loss) runs eagerly.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

SCOPES = ("whole", "regional")
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
Scope = Literal["whole", "regional"]


def compile_model(model: nn.Module, scope: Scope = "whole", mode: str = "default",
                  blocks: tuple[type[nn.Module], ...] | None = None) -> nn.Module:
    """The module to call: `torch.compile(model)` (whole), or `model` itself with each module
    of a `blocks` type compiled in place (regional; default: llmlab's transformer `Block`).
    `mode` is torch.compile's (reduce-overhead: CUDA graphs)."""
    if scope not in SCOPES:
        raise ValueError(f"compile scope must be one of {SCOPES}, got {scope!r}")
    if mode not in MODES:
        raise ValueError(f"compile mode must be one of {MODES}, got {mode!r}")
    if scope == "whole":
        return torch.compile(model, mode=mode)
    if blocks is None:
        from llmlab.model.layers import Block

        blocks = (Block,)
    found = [m for m in model.modules() if isinstance(m, blocks)]
    if not found:
        names = ", ".join(b.__name__ for b in blocks)
        raise ValueError(f"regional compile: the model has no {names} module to compile")
    for m in found:
        m.compile(mode=mode)
    # Eager-only work between the blocks can check this (LoRA's cast cache: compiled
    # blocks cast in their graphs, so copies made for eager layers would go unused).
    model.__dict__["_blocks_compiled"] = True
    return model
