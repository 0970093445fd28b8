"""A playground run's process: `python -m llmlab.lab.worker pretrain --preset micro ...` is
`llmlab pretrain --preset micro ...`, the CLI's own code, at a lower CPU priority so the
pages that answer people keep the cores first."""

from __future__ import annotations

import contextlib
import os
import sys

NICE = 10


def main(argv: list[str] | None = None) -> int:
    with contextlib.suppress(OSError):  # not allowed here: run at the normal priority
        os.nice(NICE)
    from llmlab.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
