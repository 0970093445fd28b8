"""What the browser tests share: Debian's chromium for Playwright, where screenshots go, and
the helpers both page suites drive the UI with. The `page` fixture itself is in conftest.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# LLMLAB_ARTIFACTS lets CI collect the screenshots from a folder of its choosing.
ARTIFACTS = Path(os.environ.get("LLMLAB_ARTIFACTS") or Path(__file__).parents[1] / "artifacts")


def shot(pg, name: str) -> None:  # noqa: ANN001
    path = ARTIFACTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def set_range(pg, testid: str, value: int) -> None:  # noqa: ANN001
    pg.eval_on_selector(
        f"[data-testid={testid}]",
        "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }",
        value,
    )
