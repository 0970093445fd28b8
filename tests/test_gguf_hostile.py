"""Hostile GGUF files fail fast with an error naming the file and the field (issue #27):
the `gguf` reader allocates whatever a header declares (a 96-byte file claiming a 2^40-item
array reached 14 GB), so `check_gguf` bounds every declared size by the file's size first.

Every load runs in one child process under a memory limit and a timeout, so a regression
fails here instead of exhausting the machine.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmlab.tokenizer.loaders import smollm2_gguf_path


def _s(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def _head(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


def _kv(key: str, kind: int, payload: bytes) -> bytes:
    return _s(key.encode()) + struct.pack("<I", kind) + payload


STRING, ARRAY, F32 = 8, 9, 0
# name -> (file bytes, what the error must say)
CASES: dict[str, tuple[bytes, list[str]]] = {
    "array_count": (
        _head(0, 1) + _kv("x", ARRAY, struct.pack("<IQ", 0, 1 << 40)) + bytes(47),
        ["metadata key 'x'", "array of 1099511627776 items", "96-byte file"],
    ),
    "string_length": (
        _head(0, 1) + _kv("general.name", STRING, struct.pack("<Q", 1 << 50) + b"abc"),
        ["metadata key 'general.name'", f"string of {1 << 50} bytes"],
    ),
    "string_in_array": (
        _head(0, 1) + _kv("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, 3)
                          + _s(b"a") + struct.pack("<Q", 1 << 40) + bytes(16)),
        ["metadata key 'tokenizer.ggml.tokens'[1]", "string of 1099511627776 bytes"],
    ),
    "kv_count": (_head(0, 1 << 40) + bytes(40), ["kv_count", "1099511627776 metadata keys"]),
    "tensor_count": (_head(1 << 40, 0) + bytes(40), ["tensor_count", "1099511627776 tensors"]),
    "tensor_shape": (
        _head(1, 0) + _s(b"token_embd.weight") + struct.pack("<I", 2)
        + struct.pack("<QQ", 1 << 31, 1 << 31) + struct.pack("<IQ", F32, 0) + bytes(64),
        ["tensor 'token_embd.weight'", "past the end"],
    ),
    "many_items": (  # fits in the file, but the reader would make ~2 objects per item
        _head(0, 1) + _kv("x", ARRAY, struct.pack("<IQ", 0, (1 << 20) + 1)) + bytes((1 << 20) + 1),
        ["metadata key 'x'", "array of 1048577 items is over this loader's limit"],
    ),
    "not_gguf": (b"hello world", ["too short for a GGUF header"]),
}
TRUNCATED = ["metadata key 'tokenizer.ggml.", "does not fit"]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from llmlab.weights.gguf import load_gguf
from llmlab.tokenizer import load_tokenizer
import gguf.quants, llmlab.tokenizer.hf  # imported now: the timings are of the checks alone

# A ceiling well above what the bounded checks need, far below what the reader would take.
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), hard))
out = {}
for path in map(Path, sys.argv[1:]):
    for name, load in (("model", load_gguf), ("tokenizer", load_tokenizer)):
        t = time.monotonic()
        try:
            load(path)
            err = None
        except BaseException as e:
            err = f"{type(e).__name__}: {e}"
        out[f"{path.stem}/{name}"] = [err, time.monotonic() - t]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("gguf")
    paths = []
    for name, (data, _) in CASES.items():
        (d / f"{name}.gguf").write_bytes(data)
        paths.append(d / f"{name}.gguf")
    with smollm2_gguf_path().open("rb") as f:  # the real file cut inside its vocabulary
        (d / "truncated.gguf").write_bytes(f.read(200_000))
    paths.append(d / "truncated.gguf")
    r = subprocess.run([sys.executable, "-c", CHILD, *map(str, paths)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"dir": d, **json.loads(r.stdout)}


@pytest.mark.parametrize("loader", ["model", "tokenizer"])
@pytest.mark.parametrize("case", [*CASES, "truncated"])
def test_hostile_gguf_fails_fast_naming_file_and_field(
    results: dict[str, Any], case: str, loader: str
) -> None:
    err, seconds = results[f"{case}/{loader}"]
    want = TRUNCATED if case == "truncated" else CASES[case][1]
    assert err is not None and err.split(":")[0] in ("CorruptFileError", "ValueError"), err
    assert str(results["dir"] / f"{case}.gguf") in err, err
    for piece in want:
        assert piece in err, (piece, err)
    assert seconds < 1.0, seconds


def test_cli_reports_a_hostile_gguf_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(CASES["array_count"][0])
    r = subprocess.run(
        [sys.executable, "-m", "llmlab.cli", "generate", "--model", str(bad), "--prompt", "hi"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip() == (
        f"error: {bad}: metadata key 'x': array of 1099511627776 items does not fit in a "
        "96-byte file (47 bytes left at offset 49)"
    ), r.stderr


def test_check_accepts_the_real_model() -> None:
    from llmlab.fileformat import check_gguf

    check_gguf(smollm2_gguf_path())  # a valid file passes (and the loaders' tests load it)
