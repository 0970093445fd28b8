"""Deterministic train/test splits by a hash of each item's key (question text).

Training data (SFT, RL prompts) and evaluation tasks call the same function, so an evaluation
can never score an item that training saw, whatever seeds, limits or list orders either used.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "test")


def held_out(key: str, fraction: float) -> bool:
    """True when `key` belongs to the test split holding about `fraction` of all keys."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1], got {fraction}")
    h = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def in_split(key: str, split: str, fraction: float) -> bool:
    return held_out(key, fraction) == (check_split(split) == "test")
