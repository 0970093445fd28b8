"""Checks of a file's declared structure before a library parses it, shared by the weight
loaders and the tokenizer loaders (which sit below them): a corrupt or hostile file is a
clear error naming the file and the field, never a traceback or an allocation it asks for."""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any


class CorruptFileError(ValueError):
    """A weights file that can't be parsed: truncated, corrupt, or not the format it claims."""


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
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType  # gguf: ~1 s to import

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
