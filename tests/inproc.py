"""`llmlab ...` run inside the test process: what a shell would see (exit code, stdout,
stderr), without a new interpreter importing torch for every command (3-10 s a run on two
busy cores). Runs that compile, or that must be killed, still use a subprocess."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import torch


def llmlab(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    from llmlab.cli import main

    out, err = io.StringIO(), io.StringIO()
    threads, old_stdin = torch.get_num_threads(), sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse: a usage error (2) or --help (0)
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    finally:
        sys.stdin = old_stdin
        torch.set_num_threads(threads)  # --threads must not outlive its command
    return subprocess.CompletedProcess(["llmlab", *args], code, out.getvalue(), err.getvalue())
