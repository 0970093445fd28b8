"""Shared bits of the tokenizer benchmarks: the corpus and running a timed worker in a child
process (so that thread-pool settings such as RAYON_NUM_THREADS take effect per measurement)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from llmlab.data.corpora import kjv_text, pydocs_text

DOC_CHARS = 64 * 1024


def documents() -> list[str]:
    """KJV + Python docs (~15 MB) cut at blank lines into ~64K-character documents, so that
    both trainers/encoders get the same, parallelizable units."""
    text = kjv_text() + "\n\n" + pydocs_text()
    docs, start = [], 0
    while start < len(text):
        cut = text.find("\n\n", start + DOC_CHARS)
        end = len(text) if cut < 0 else cut + 2
        docs.append(text[start:end])
        start = end
    return docs


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def run_worker(script: str, args: list[str], threads: int) -> dict:
    """Run ``script --worker ...`` in a fresh process limited to ``threads`` threads."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="true" if threads > 1 else "false")
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, script, "--worker", *args], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
