"""A language model as you hold it: weights and tokenizer, loaded by name, directory or .gguf
file (`load`), or loaded the way the CLI does it, with an adapter merged and the weights cast
or quantised (`load_lm`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmlab.generate.chat import chat, generate_text
from llmlab.model.config import ModelConfig
from llmlab.model.pooling import embed
from llmlab.model.quant import quantize_int4_, quantize_int8_
from llmlab.model.transformer import Transformer
from llmlab.peft.model import apply_adapter
from llmlab.weights.registry import load_weights, save_checkpoint


@dataclass
class LoadedModel:
    """A model with its tokenizer: what `llmlab.load` returns."""

    name: str
    model: Transformer
    tokenizer: Any
    kind: str  # "causal-lm" | "encoder" | "seq2seq"
    source: str

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg

    def generate(self, prompt: str | list[str], **kw: Any) -> Any:
        return generate_text(self, prompt, **kw)

    def chat(self, messages: list[dict[str, str]], **kw: Any) -> str:
        return chat(self, messages, **kw)

    def embed(self, texts: list[str], batch_size: int = 64, normalize: bool = True) -> torch.Tensor:
        return embed(self, texts, batch_size=batch_size, normalize=normalize)

    def save(self, out_dir: str | Path) -> Path:
        return save_checkpoint(self.model, out_dir, self.tokenizer)


def load(
    name_or_path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> LoadedModel:
    """`load("smollm2-135m-instruct")`, `load("minilm-l6-v2")` or `load("<checkpoint dir>")`."""
    return LoadedModel(*load_weights(name_or_path, dtype, device))


# Each --dtype as what it does to fp32 weights: bf16 is a cast, int8/int4 swap each Linear
# for a weight-only quantised one.
CASTS: dict[str, Callable[[torch.nn.Module], Any]] = {
    "fp32": lambda m: m,
    "bf16": lambda m: m.to(torch.bfloat16),
    "int8": quantize_int8_,
    "int4": quantize_int4_,
}


def to_dtype(lm: LoadedModel, dtype: str) -> LoadedModel:
    """Cast or quantise `lm`'s fp32 weights in place: "fp32", "bf16", "int8" or "int4"."""
    if dtype not in CASTS:
        raise ValueError(f"--dtype must be one of {', '.join(CASTS)}, got {dtype!r}")
    CASTS[dtype](lm.model)
    return lm


def load_lm(
    name_or_path: str | Path, dtype: str = "fp32", adapter: str | None = None
) -> LoadedModel:
    """Load in fp32, merge a PEFT adapter (LoRA/DoRA merge into fp32 weights, before any
    cast), then cast or quantise: `llmlab generate|chat|eval --dtype --adapter`."""
    if dtype not in CASTS:  # fail before the model loads
        raise ValueError(f"--dtype must be one of {', '.join(CASTS)}, got {dtype!r}")
    lm = load(name_or_path)
    if adapter:
        apply_adapter(lm, adapter)
    return to_dtype(lm, dtype)
