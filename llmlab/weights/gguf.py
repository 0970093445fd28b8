"""Import llama-architecture GGUF files (llama.cpp's format) into our Transformer.

Quantised blocks are dequantised to fp32 by the `gguf` package. llama.cpp's converter
permutes the rows of Q and K so that RoPE rotates adjacent pairs; we un-permute them back
to the `rotate_half` layout that HF Llama and our attention use.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmlab.model.config import ModelConfig
from llmlab.model.positions import unpermute_llamacpp
from llmlab.weights.io import CorruptFileError

_LAYER_MAP = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


# The `gguf` package's reader trusts every declared count: a 96-byte file whose array claims
# 2^40 items makes it build Python objects until memory runs out. `check_gguf` walks the
# header first, with every size checked against the bytes left in the file.
MAX_ARRAY_ITEMS = 1 << 20  # per metadata array: vocabularies and merges are ~50k-300k
MAX_METADATA_ITEMS = 1 << 21  # all arrays together: the reader makes ~2 objects per item
_MAX_DIMS = 4  # GGML_MAX_DIMS
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # type -> bytes
_STRING, _ARRAY = 8, 9


class _Header:
    """A bounds-checked cursor over a GGUF file's bytes."""

    def __init__(self, buf: Any, path: Path, order: str) -> None:
        self.buf, self.path, self.order, self.pos, self.items = buf, path, order, 0, 0
        self.size = len(buf)

    def fail(self, where: str, what: str) -> CorruptFileError:
        return CorruptFileError(f"{self.path}: {where}: {what}")

    def need(self, n: int, where: str, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(where, f"{what} does not fit in a {self.size}-byte file "
                                   f"({self.size - self.pos} bytes left at offset {self.pos})")

    def num(self, fmt: str, where: str) -> int:
        n = struct.calcsize(fmt)
        self.need(n, where, f"a {n}-byte field")
        (v,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += n
        return int(v)

    def string(self, where: str) -> str:
        n = self.num("Q", where)
        self.need(n, where, f"a string of {n} bytes")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(where, f"string is not UTF-8 ({e.reason})") from None

    def _strings(self, count: int, where: str) -> None:
        # A vocabulary is ~50k-260k strings: skip them without copying or decoding.
        unpack, pos, end = struct.Struct(self.order + "Q").unpack_from, self.pos, self.size
        for i in range(count):
            if end - pos < 8:
                self.pos = pos
                self.need(8, f"{where}[{i}]", "a string length")
            (n,) = unpack(self.buf, pos)
            pos += 8
            if n > end - pos:
                self.pos = pos
                self.need(n, f"{where}[{i}]", f"a string of {n} bytes")
            pos += n
        self.pos = pos

    def value(self, kind: int, where: str, depth: int = 0) -> None:
        if kind in _SCALAR:
            self.need(_SCALAR[kind], where, f"a {_SCALAR[kind]}-byte value")
            self.pos += _SCALAR[kind]
        elif kind == _STRING:
            self.string(where)
        elif kind == _ARRAY:
            item, count = self.num("I", where), self.num("Q", where)
            if item == _ARRAY and depth >= 1:
                raise self.fail(where, "arrays nested more than two deep")
            least = _SCALAR.get(item, 8 if item == _STRING else 12)  # bytes per item, at least
            if item not in _SCALAR and item not in (_STRING, _ARRAY):
                raise self.fail(where, f"array of unknown value type {item}")
            self.need(count * least, where, f"array of {count} items")
            self.items += count
            if count > MAX_ARRAY_ITEMS or self.items > MAX_METADATA_ITEMS:
                raise self.fail(where, f"array of {count} items is over this loader's limit "
                                       f"({MAX_ARRAY_ITEMS} per array, {MAX_METADATA_ITEMS} "
                                       "in all)")
            if item in _SCALAR:
                self.pos += count * least
            elif item == _STRING:
                self._strings(count, where)
            else:
                for i in range(count):
                    self.value(item, f"{where}[{i}]", depth + 1)
        else:
            raise self.fail(where, f"unknown value type {kind}")


def check_gguf(path: str | Path) -> None:
    """Raise CorruptFileError naming the file and the field when a GGUF header declares more
    than the file holds (array lengths, string lengths, key and tensor counts, tensor shapes
    and offsets) or values the reader can't handle. Reads only the header; bounded time."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    with path.open("rb") as f:
        size = path.stat().st_size
        if size < 24:
            raise CorruptFileError(f"{path}: {size} bytes is too short for a GGUF header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != b"GGUF":
                raise CorruptFileError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r})")
            # A version whose low half is 0 was written on a machine of the other byte order.
            order = ">" if struct.unpack_from("<I", buf, 4)[0] & 0xFFFF == 0 else "<"
            h = _Header(buf, path, order)
            h.pos = 4
            version = h.num("I", "version")
            if version not in (2, 3):
                raise h.fail("version", f"GGUF version {version} is not supported (2 or 3)")
            n_tensors, n_kv = h.num("Q", "tensor_count"), h.num("Q", "kv_count")
            # Each key is at least 13 bytes (length, type, one-byte value), each tensor 24.
            h.need(n_kv * 13, "kv_count", f"{n_kv} metadata keys")
            h.need(n_tensors * 24, "tensor_count", f"{n_tensors} tensors")
            keys: set[str] = set()
            alignment = 32
            for i in range(n_kv):
                key = h.string(f"metadata key #{i}")
                where = f"metadata key {key!r}"
                if key in keys:
                    raise h.fail(where, "duplicate key")
                keys.add(key)
                kind = h.num("I", where)
                if key == "general.alignment":
                    if kind != 4:
                        raise h.fail(where, "alignment must be a uint32")
                    alignment = struct.unpack_from(order + "I", buf, h.pos)[0]
                    if alignment == 0 or alignment & (alignment - 1):
                        raise h.fail(where, f"alignment {alignment} is not a power of two")
                h.value(kind, where)
            tensors = []
            names: set[str] = set()
            for i in range(n_tensors):
                name = h.string(f"tensor #{i} name")
                where = f"tensor {name!r}"
                if name in names:
                    raise h.fail(where, "duplicate tensor name")
                names.add(name)
                n_dims = h.num("I", where)
                if n_dims > _MAX_DIMS:
                    raise h.fail(where, f"{n_dims} dimensions (at most {_MAX_DIMS})")
                dims = [h.num("Q", where) for _ in range(n_dims)]
                kind = h.num("I", where)
                try:
                    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
                except (ValueError, KeyError):
                    raise h.fail(where, f"unknown tensor type {kind}") from None
                n = 1
                for d in dims:
                    n *= d
                if n % block:
                    raise h.fail(where, f"shape {dims} is not a whole number of "
                                        f"{block}-element blocks")
                tensors.append((where, dims, h.num("Q", where), n // block * type_size))
            data = h.pos + (-h.pos % alignment)
            for where, dims, offset, nbytes in tensors:
                if data + offset + nbytes > size:
                    raise h.fail(where, f"shape {dims} at data offset {offset} needs "
                                        f"{nbytes} bytes, past the end of a {size}-byte file")


def open_gguf(path: str | Path) -> Any:
    from gguf import GGUFReader

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    check_gguf(path)  # before the reader: it allocates whatever the header claims
    try:
        return GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError, IndexError, struct errors...
        raise CorruptFileError(
            f"{path}: not a readable GGUF file (truncated or corrupt?): {e}"
        ) from e


def field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def gguf_config(reader: Any, path: str | Path = "<gguf>") -> ModelConfig:
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama')")
    a = "llama."
    n_head = int(field(reader, a + "attention.head_count"))
    d = int(field(reader, a + "embedding_length"))
    names = {t.name for t in reader.tensors}
    eos = field(reader, "tokenizer.ggml.eos_token_id")
    return ModelConfig(
        vocab_size=int(
            field(reader, a + "vocab_size") or len(field(reader, "tokenizer.ggml.tokens"))
        ),
        d_model=d,
        n_layer=int(field(reader, a + "block_count")),
        n_head=n_head,
        n_kv_head=int(field(reader, a + "attention.head_count_kv", n_head)),
        head_dim=int(field(reader, a + "rope.dimension_count", d // n_head)),
        d_ff=int(field(reader, a + "feed_forward_length")),
        max_seq_len=int(field(reader, a + "context_length", 2048)),
        pos="rope",
        rope_theta=float(field(reader, a + "rope.freq_base", 10000.0)),
        norm="rmsnorm",
        norm_eps=_round_eps(float(field(reader, a + "attention.layer_norm_rms_epsilon", 1e-5))),
        mlp="swiglu",
        bias=False,
        tie_embeddings="output.weight" not in names,
        bos_token_id=field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=int(eos) if eos is not None else None,
        pad_token_id=field(reader, "tokenizer.ggml.padding_token_id"),
    )


def _round_eps(eps: float) -> float:
    # float32 storage turns 1e-5 into 9.99999975e-06; snap back to the decimal it came from.
    return float(f"{eps:.6g}")


def load_gguf(
    path: str | Path, progress: bool = False
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    from gguf.quants import dequantize

    reader = open_gguf(path)
    cfg = gguf_config(reader, path)
    assert cfg.n_kv_head is not None
    sd: dict[str, torch.Tensor] = {}
    tensors = reader.tensors
    if progress:
        from tqdm import tqdm

        tensors = tqdm(tensors, desc=f"dequantising {Path(path).name}", unit="tensor", leave=False)
    try:
        for t in tensors:
            arr = dequantize(t.data, t.tensor_type)
            w = torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))
            name = t.name
            if name == "token_embd.weight":
                sd["model.embed_tokens.weight"] = w
            elif name == "output_norm.weight":
                sd["model.norm.weight"] = w
            elif name == "output.weight":
                sd["lm_head.weight"] = w
            elif name.startswith("blk."):
                _, i, kind, _ = name.split(".")
                if kind == "attn_q":
                    w = unpermute_llamacpp(w, cfg.n_head)
                elif kind == "attn_k":
                    w = unpermute_llamacpp(w, cfg.n_kv_head)
                if kind not in _LAYER_MAP:
                    continue  # e.g. rope_freqs: recomputed from rope_theta
                sd[f"model.layers.{i}.{_LAYER_MAP[kind]}.weight"] = w
    except (ValueError, IndexError) as e:
        raise CorruptFileError(f"{path}: tensor data could not be read (truncated?): {e}") from e
    return cfg, sd
