"""Write the OpenAI-API conformance table into README.md from the rows in
tests/server/conformance.py (each one a test in test_conformance.py).

    python scripts/conformance.py           # rewrite the table between its markers
    python scripts/conformance.py --check   # exit 1 if the README's table is stale
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from server.conformance import BEGIN, END, render  # noqa: E402


def main(argv: list[str]) -> int:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    table = render()
    if BEGIN not in text:
        raise SystemExit(f"README.md has no {BEGIN!r} marker: add one where the table goes")
    new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: table, text, flags=re.S)
    if "--check" in argv:
        return 0 if new == text else 1
    readme.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
