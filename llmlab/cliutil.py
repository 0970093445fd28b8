"""Shared by every subcommand: expected failures print `error: ...` and exit nonzero."""

from __future__ import annotations

import argparse
import functools
import sys
import traceback
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]

# Bad input surfaces as these; anything else is a bug and keeps its traceback.
EXPECTED = (ValueError, RuntimeError, OSError, ImportError, MemoryError, TypeError)


def guard(fn: Handler) -> Handler:
    @functools.wraps(fn)
    def run(a: argparse.Namespace) -> int:
        try:
            return fn(a)
        except KeyboardInterrupt:
            return 130
        except EXPECTED as e:
            if getattr(a, "debug", False):
                traceback.print_exc()
            print(f"error: {e}", file=sys.stderr)
            return 2

    return run
