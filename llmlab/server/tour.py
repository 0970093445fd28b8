"""The guided tour (issue #23 item 7): its steps live in one data file, data/tour.json.

Each step names a page route, the element to highlight, what to fill first and the words
to say. The words become narration entries `tour-ID`, so the same /api/narration routes (and
the same Piper cache) serve the tour's transcript and audio as the pages'."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

TOUR_FILE = Path(__file__).parent / "data" / "tour.json"
REQUIRED = ("id", "title", "route", "target", "text")


@functools.cache
def steps() -> list[dict[str, Any]]:
    """The steps in order, checked once: a broken data file fails loudly at start-up, naming
    the step and the field, rather than leaving the tour stuck on a page."""
    raw = json.loads(TOUR_FILE.read_text(encoding="utf-8"))["steps"]
    seen: set[str] = set()
    for i, s in enumerate(raw):
        for f in REQUIRED:
            if not isinstance(s.get(f), str) or not s[f]:
                raise ValueError(f"{TOUR_FILE.name}: step {i} needs a non-empty string {f!r}")
        if not s["route"].startswith("#/"):
            raise ValueError(f"{TOUR_FILE.name}: step {s['id']!r}: route must start with '#/'")
        if s["id"] in seen:
            raise ValueError(f"{TOUR_FILE.name}: step id {s['id']!r} is used twice")
        seen.add(s["id"])
        if not isinstance(s.get("fill", {}), dict):
            raise ValueError(f"{TOUR_FILE.name}: step {s['id']!r}: fill must map selector -> text")
    return raw


def narrations() -> dict[str, str]:
    """The narration entries of the tour: `tour-ID` -> the step's words."""
    return {f"tour-{s['id']}": s["text"] for s in steps()}


def public_steps() -> list[dict[str, Any]]:
    """What the page needs, with each step's narration page name."""
    return [{**{k: v for k, v in s.items() if not k.startswith("_")},
             "fill": s.get("fill", {}), "narration": f"tour-{s['id']}"} for s in steps()]
