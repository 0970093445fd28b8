"""The speed switches, decided once. Every fast path in llmlab (oneDNN matmuls, CUDA-graph and
Triton decoding, the lean CPU decode step, the fused LoRA step) asks `speed` whether it may
run, instead of reading an environment variable of its own at the point of use.

`speed` is built from the environment when llmlab is imported; CLI flags (`llmlab --fast
NAME=0`) and the server change its fields, and tests or benchmarks compare a path with and
without through `speed_override(...)`. Each fast path still checks on its own whether it
*applies* (device, dtype, batch size); these fields only say whether it is *allowed*.

| field          | environment              | what it turns on                                  |
|----------------|--------------------------|---------------------------------------------------|
| onednn         | LLMLAB_ONEDNN=0          | fp32 CPU matmuls through oneDNN (model/linear.py) |
| cuda_graphs    | LLMLAB_CUDA_GRAPHS=0     | CUDA-graph decoding (generate/fast/)              |
| triton_decode  | LLMLAB_TRITON_DECODE=0   | Triton batch-1 decoding (generate/fast/)          |
| triton_tiles   | LLMLAB_TRITON_DECODE=k=v | its tile settings, e.g. "fuse=3,rows_o=32"        |
| lean_decode    | LLMLAB_LEAN_DECODE=0     | the lean CPU decode step for quantised models     |
| lora_fast      | LLMLAB_LORA_FAST=0       | the fused LoRA training step (peft/lora_fast.py)  |
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class Speed:
    onednn: bool = True
    cuda_graphs: bool = True
    triton_decode: bool = True
    triton_tiles: str = ""  # "" = the defaults; else NAME=INT pairs (generate/fast/ Tiles)
    lean_decode: bool = True
    lora_fast: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Speed:
        s = cls()
        for f in ("onednn", "cuda_graphs", "lean_decode", "lora_fast"):
            setattr(s, f, env.get(f"LLMLAB_{f.upper()}", "1") != "0")
        triton = env.get("LLMLAB_TRITON_DECODE", "1")
        s.triton_decode = triton != "0"
        s.triton_tiles = "" if triton in ("", "0", "1") else triton
        return s

    def set(self, spec: str) -> None:
        """Apply one `NAME=VALUE` (the `--fast` flag): `lean_decode=0`, `triton_tiles=fuse=3`."""
        name, sep, value = spec.partition("=")
        fields = {f.name: f for f in dataclasses.fields(self)}
        if not sep or name not in fields:
            raise ValueError(f"--fast {spec!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(fields)}")
        if name == "triton_tiles":
            self.triton_tiles = value
        elif value in ("0", "1"):
            setattr(self, name, value == "1")
        else:
            raise ValueError(f"--fast {spec!r}: {name} takes 0 or 1")


speed = Speed.from_env()


@contextmanager
def speed_override(**fields: Any) -> Iterator[Speed]:
    """`with speed_override(lean_decode=False):` runs the block with those fields changed."""
    old = dataclasses.replace(speed)
    try:
        for k, v in fields.items():
            if not hasattr(speed, k):
                raise AttributeError(f"Speed has no field {k!r}")
            setattr(speed, k, v)
        yield speed
    finally:
        for f in dataclasses.fields(speed):
            setattr(speed, f.name, getattr(old, f.name))
