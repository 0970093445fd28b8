"""Helpers shared by the eval tests: run the CLI, read Python-docs text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYDOCS = Path("/usr/share/doc/python3.11/html/_sources/tutorial")


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "llmlab.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def docs_text(name: str = "controlflow") -> str:
    return (PYDOCS / f"{name}.rst.txt").read_text(encoding="utf-8")
