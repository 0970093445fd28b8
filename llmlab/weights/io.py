"""Atomic file and directory writes, and safetensors reads that name the bad file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmlab.fileformat import CorruptFileError


@contextlib.contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temp dir beside `out`; on success swap it in, so readers never see half a write.

    An existing `out` is replaced only if it is empty or one of our outputs (it holds one of
    OUTPUT_MARKERS): `llmlab export-hf model ~/Documents` must not delete Documents."""
    out = Path(out)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# A file that every directory written through atomic_dir holds: HF and llmlab model dirs,
# token shards, checkpoints, PEFT adapters.
OUTPUT_MARKERS = ("config.json", "llmlab.json", "manifest.json", "meta.json",
                  "adapter_config.json")


def _check_replaceable(out: Path) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise FileExistsError(f"{out}: exists and is not a directory; give a new output path")
    names = sorted(p.name for p in out.iterdir())
    if names and not any(m in names for m in OUTPUT_MARKERS):
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise FileExistsError(
            f"{out}: exists and is not an llmlab output (it holds {shown}; none of "
            f"{', '.join(OUTPUT_MARKERS)}); give a new output path or remove it first")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_safetensors(state: dict[str, torch.Tensor], path: str | Path) -> None:
    path = Path(path)
    # safetensors refuses shared storage (tied weights); the caller dropped duplicates already.
    state = {k: v.contiguous() for k, v in state.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptFileError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {e}"
        ) from e
