"""Run untrusted Python (model-written code) with CPU, memory, process, file and network limits.

Layers, each independent so one failing open does not free the code:
- a fresh subprocess in its own process group (killed as a group on timeout), isolated Python
  (``-I``: no PYTHONPATH, no user site), an empty environment (no proxies), a fresh temp cwd;
- ``setrlimit``: RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_NPROC (fork bombs), RLIMIT_FSIZE;
- as root: a new network namespace (no interfaces, so no network) and a drop to ``nobody`` so the
  OS refuses writes outside the temp dir (which is chowned to it);
- inside the child, before the code runs: socket creation and writes outside the cwd raise.

Used by ``humaneval`` and by code rewards in alignment: ``run_code(src).passed``.
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000
NOBODY = 65534

# Runs in the child before the untrusted file: blocks sockets and writes outside the cwd.
_BOOT = r"""
import builtins, io, os, socket, sys
_root = os.path.realpath(os.getcwd())
def _inside(p):
    try:
        p = os.fspath(p)
    except TypeError:
        return True  # file descriptors: already opened under these rules
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    p = os.path.realpath(p)
    return p == _root or p.startswith(_root + os.sep)
def _deny(*a, **k):
    raise PermissionError("sandbox: network access is disabled")
class _NoSocket(socket.socket):
    def __init__(self, *a, **k):
        _deny()
socket.socket = _NoSocket
socket.create_connection = _deny
socket.socketpair = _deny
_open = builtins.open
def _guarded_open(file, mode="r", *a, **k):
    if any(c in mode for c in "wax+") and not _inside(file):
        raise PermissionError(f"sandbox: writing outside the sandbox directory: {file!r}")
    return _open(file, mode, *a, **k)
builtins.open = io.open = _guarded_open
_os_open = os.open
_W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _guarded_os_open(path, flags, *a, **k):
    if flags & _W and not _inside(path):
        raise PermissionError(f"sandbox: writing outside the sandbox directory: {path!r}")
    return _os_open(path, flags, *a, **k)
os.open = _guarded_os_open
def _guard_path(fn, n=1):
    def g(*a, **k):
        if not all(_inside(x) for x in a[:n]):
            raise PermissionError(f"sandbox: {fn.__name__} outside the sandbox directory")
        return fn(*a, **k)
    return g
for _n, _k in (("remove", 1), ("unlink", 1), ("rmdir", 1), ("mkdir", 1), ("makedirs", 1),
               ("rename", 2), ("replace", 2), ("chmod", 1), ("truncate", 1), ("symlink", 2),
               ("link", 2)):
    if hasattr(os, _n):
        setattr(os, _n, _guard_path(getattr(os, _n), _k))
del _n, _k
sys.argv = [sys.argv[1]]
_src = _open(sys.argv[0], encoding="utf-8").read()
_g = {"__name__": "__main__", "__file__": sys.argv[0], "__builtins__": builtins}
exec(compile(_src, sys.argv[0], "exec"), _g)
"""


@dataclass
class SandboxResult:
    status: str  # "passed" | "failed" | "timeout"
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class Limits:
    timeout: float = 5.0  # wall-clock seconds
    cpu_seconds: int = 5
    memory_mb: int = 512
    max_procs: int = 8
    max_file_mb: int = 16
    max_output_chars: int = 10_000

    def validate(self) -> None:
        for name in ("timeout", "cpu_seconds", "memory_mb", "max_procs", "max_file_mb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"sandbox limit {name} must be > 0, got {getattr(self, name)}")


def _world_executable(path: str) -> bool:
    """True when every directory on the way and the file itself are o+x (usable by nobody)."""
    p = Path(path).resolve()
    for part in [p, *p.parents]:
        try:
            if not part.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _interpreter(drop: bool) -> str:
    """This interpreter, or when dropping to nobody one that nobody may run."""
    if not drop or _world_executable(sys.executable):
        return sys.executable
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
        if cand and _world_executable(cand):
            return cand
    raise RuntimeError("sandbox: no Python interpreter runnable as 'nobody' (install python3)")


def _can_drop() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _preexec(limits: Limits, drop: bool) -> None:
    """In the child between fork and exec: limits, no network, no privileges."""
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_mb * mb, limits.max_file_mb * mb))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if drop:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare(CLONE_NEWNET)  # best effort; the in-child socket block still applies
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    # After the uid change: RLIMIT_NPROC counts the processes of the (new) user.
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_procs, limits.max_procs))


def _tail(path: Path, n: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _kill_group(pid: int) -> None:
    """SIGKILL the whole group, repeating until it is empty: a fork bomb may still be forking."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.01)


def run_code(source: str, limits: Limits | None = None) -> SandboxResult:
    """Run `source` as a script; "passed" iff it exits 0 within the limits."""
    if not isinstance(source, str):
        raise TypeError(f"sandbox: source must be str, got {type(source).__name__}")
    limits = limits or Limits()
    limits.validate()
    drop = _can_drop()
    python = _interpreter(drop)
    with tempfile.TemporaryDirectory(prefix="llmlab-sandbox-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        prog = work / "main.py"
        prog.write_text(source, encoding="utf-8")
        out_p, err_p = Path(tmp) / "stdout", Path(tmp) / "stderr"
        if drop:
            os.chmod(tmp, 0o711)  # nobody may enter, not list or write
            os.chown(work, NOBODY, NOBODY)
            os.chown(prog, NOBODY, NOBODY)
        t0 = time.monotonic()
        # stdout/stderr go to files (capped by RLIMIT_FSIZE), not pipes: a child spewing output
        # cannot fill our memory, and orphaned grandchildren cannot keep a pipe open.
        with out_p.open("wb") as out, err_p.open("wb") as err:
            proc = subprocess.Popen(
                [python, "-I", "-S", "-c", _BOOT, str(prog)],
                cwd=work,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # own process group: killpg reaches forked children
                preexec_fn=lambda: _preexec(limits, drop),
            )
            status = "failed"
            try:
                rc: int | None = proc.wait(timeout=limits.timeout)
            except subprocess.TimeoutExpired:
                rc, status = None, "timeout"
                proc.kill()
                proc.wait()  # reap the leader first, or killpg keeps finding its zombie
            _kill_group(proc.pid)  # and anything the code left running
        secs = time.monotonic() - t0
        if rc == 0:
            status = "passed"
        elif rc is not None and -rc in (signal.SIGXCPU, signal.SIGKILL):
            status = "timeout"  # CPU limit reached
        n = limits.max_output_chars
        # The random temp dir would make identical runs report different tracebacks.
        out_s, err_s = (_tail(p, n).replace(str(work), "<sandbox>") for p in (out_p, err_p))
        return SandboxResult(status, rc, out_s, err_s, secs)


def run_many(
    sources: Sequence[str], limits: Limits | None = None, workers: int = 2
) -> list[SandboxResult]:
    """Run several programs, `workers` at a time, results in input order."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(lambda s: run_code(s, limits), sources))
