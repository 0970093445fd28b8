"""Helpers shared by the eval tests: run the CLI, read Python-docs text."""

from __future__ import annotations

import subprocess
from pathlib import Path

from inproc import llmlab

ROOT = Path(__file__).resolve().parents[2]
PYDOCS = Path("/usr/share/doc/python3.11/html/_sources/tutorial")


def cli(*args: str) -> subprocess.CompletedProcess:
    return llmlab(*args)


def docs_text(name: str = "controlflow") -> str:
    return (PYDOCS / f"{name}.rst.txt").read_text(encoding="utf-8")
