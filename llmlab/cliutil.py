"""Shared by every subcommand: expected failures print `error: ...` and exit nonzero."""

from __future__ import annotations

import argparse
import difflib
import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int]

DTYPES = ("fp32", "bf16", "int8", "int4")  # --dtype: what llmlab.lm.to_dtype accepts

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


def unknown_flags_error(extra: list[str], valid: list[str]) -> str:
    flags = [a.split("=")[0] for a in extra if a.startswith("--")]
    msg = f"unknown option(s) {flags or extra}"
    close = [difflib.get_close_matches(f, valid, n=1, cutoff=0.75) for f in flags]
    sugg = [f"{f} -> {c[0]}" for f, c in zip(flags, close, strict=True) if c]
    if sugg:
        msg += f" (did you mean: {', '.join(sugg)})"
    return msg + f"; valid options: {' '.join(sorted(valid))}"


class StrictParser(argparse.ArgumentParser):
    """Reports an unknown option with the closest valid one and the full list, instead of
    argparse's bare 'unrecognized arguments'."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        ns, extra = super().parse_known_args(args, namespace)
        if extra:
            valid = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
            self.error(unknown_flags_error(extra, valid))
        return ns, extra


def strict(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make a subparser strict: `add_parser` builds the parent's class, so switch it after."""
    p.__class__ = StrictParser
    p.allow_abbrev = False  # "--max-step" must not silently mean --max-steps
    return p
