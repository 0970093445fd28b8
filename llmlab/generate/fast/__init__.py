"""Faster decoders of the same maths, and the one place that picks among them.

`engine.iter_decode` is the reference: the model's own forward, one token at a time. Each
decoder here computes the same tokens with fewer launches or less overhead, where its
conditions hold, and `pick_decoder` is the only place those conditions are checked; every
entry point (`iter_decode`, and through it `complete` and `stream_batch`) asks it first.

| decoder       | file             | when                                                     |
|---------------|------------------|----------------------------------------------------------|
| LeanDecoder   | cpu.py           | CPU, batch 1, a weight-quantised Llama-style model       |
| TritonDecoder | triton_decode.py | CUDA, batch 1, a plain Llama-style model, no autocast    |
| StaticDecoder | static.py        | CUDA otherwise: one CUDA graph replayed per token         |

`llmlab.settings.speed` (lean_decode, triton_decode + triton_tiles, cuda_graphs) turns each
off. Every decoder has `generate(prompts, params, pad_id) -> Iterator[Step]`.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any, Protocol

import torch

from llmlab.generate.fast.cpu import LeanDecoder, lean_supported
from llmlab.generate.fast.static import StaticDecoder
from llmlab.generate.sampling import SamplingParams, Step
from llmlab.settings import speed


class Decoder(Protocol):
    def generate(self, prompts: list[list[int]], params: SamplingParams,
                 pad_id: int = 0) -> Iterator[Step]: ...


def pick_decoder(model: Any, prompts: list[list[int]], params: SamplingParams,
                 return_logits: bool = False) -> Decoder | None:
    """A fast decoder for this batch of (left-padded) prompts, or None where the model's own
    forward must run."""
    dev = model.device.type
    if dev == "cpu":
        return lean_decoder(model, prompts, params, return_logits)
    # The graph decoders keep no logits per step, and sample (greedy) inside the graph,
    # where no grammar mask can reach: a constrained request runs the plain engine.
    if dev == "cuda" and not return_logits and params.constraint is None:
        return graph_decoder(model, prompts, params)
    return None


def lean_decoder(model: Any, prompts: list[list[int]], params: SamplingParams,
                 return_logits: bool = False) -> LeanDecoder | None:
    """Batch 1 of a quantised Llama-style model on the CPU, outside autocast."""
    if len(prompts) != 1 or not speed.lean_decode or torch.is_autocast_enabled("cpu") \
            or not lean_supported(model):
        return None
    return LeanDecoder(model, len(prompts[0]) + params.max_new_tokens, return_logits)


# One CUDA-graph decoder per model, kept for the next call of the same shape (an RL run
# generates the same batch size every step; the weights change in place, the graph reads them).
_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def graph_decoder(model: Any, prompts: list[list[int]], params: SamplingParams) -> Any:
    """A StaticDecoder replaying one CUDA graph per token, or None where the dynamic engine
    must run: a repetition penalty (its `seen` set isn't in the graph), sharded parameters
    (FSDP re-allocates them each forward), or `speed.cuda_graphs` off."""
    if (params.repetition_penalty != 1.0 or not speed.cuda_graphs
            or any(type(p).__name__ == "DTensor" for p in model.parameters())):
        return None
    need = max(len(p) for p in prompts) + params.max_new_tokens + 1
    max_len = min(-(-need // 128) * 128, model.cfg.max_seq_len)  # buckets: fewer captures
    if need > max_len:
        return None
    amp = torch.is_autocast_enabled("cuda")
    # Adapter switches are Python branches the graph froze: they are part of the key.
    flags = tuple((getattr(m, "disabled", None), getattr(m, "merged", None))
                  for m in model.modules() if hasattr(m, "merged"))
    key = (len(prompts), max_len, amp, torch.get_autocast_dtype("cuda") if amp else None, flags,
           model.training)  # dropout on or off is frozen into the graph too
    held = _DECODERS.get(model)
    if held is None or held[0] != key:
        dec = triton_decoder(model, len(prompts), max_len, amp)
        held = (key, dec or StaticDecoder(model, len(prompts), max_len))  # replaces the old one
        _DECODERS[model] = held
    return held[1]


def triton_decoder(model: Any, batch: int, max_len: int, amp: bool) -> Any:
    """Batch 1 outside autocast and training: the Triton kernels (triton_decode.py), where
    triton is installed and the model has their shape. `speed.triton_decode` off opts out;
    `speed.triton_tiles` (e.g. "fuse=3,rows_o=32", see `Tiles`) replaces the defaults."""
    if batch != 1 or amp or (model.training and model.cfg.dropout > 0) or not speed.triton_decode:
        return None
    try:  # lazy: triton is an optional, CUDA-only dependency
        from llmlab.generate.fast.triton_decode import Tiles, TritonDecoder, supports
    except ImportError:  # no triton
        return None
    try:
        tiles = Tiles.parse(speed.triton_tiles) if speed.triton_tiles else None
    except ValueError as e:  # named as the user most likely set it
        raise ValueError(f"LLMLAB_TRITON_DECODE={speed.triton_tiles!r}: {e}") from None
    return TritonDecoder(model, max_len, tiles=tiles) if supports(model) is None else None
