"""Helpers shared by the training tests: run the CLI, prepare a small KJV data dir."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from inproc import llmlab

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--d-model", "32", "--n-layer", "2", "--n-head", "2", "--seq-len", "32",
        "--batch-size", "4", "--eval-batches", "2", "--sample-tokens", "8", "--log-every", "1",
        "--threads", "1", "--no-progress", "--no-tensorboard", "--warmup-steps", "5"]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = llmlab(*args)
    if check and r.returncode:
        raise AssertionError(r.stderr[-3000:])
    return r


def make_data(d: Path) -> Path:
    """300 kB of the KJV in 20-verse documents, a 512-id BPE trained on it."""
    from llmlab.data.corpora import kjv_text

    lines = kjv_text()[:300_000].splitlines()
    docs = ["\n".join(lines[i : i + 20]) for i in range(0, len(lines), 20)]
    (d / "kjv.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    cli("data", "prepare", "--input", str(d / "kjv.jsonl"), "--tokenizer", "bpe:512",
        "--out", str(d / "prepared"), "--val-fraction", "0.1", "--quiet")
    return d / "prepared"


def metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
