"""Run untrusted Python (model-written code) with CPU, memory, process, file and network limits.

Two mechanisms; ``sandbox_mechanism()`` says which one this machine uses.

``bwrap`` (bubblewrap), the strong one. Every run gets fresh user, mount, PID, network, IPC, UTS
and cgroup namespaces:
- the filesystem is a read-only view of ``/usr`` (and the Python install) only: no home, no
  project, no host ``/tmp``; the writable places are a private ``/tmp`` (the work dir lives in it)
  and ``/dev/shm``, tmpfs mounts with a *total* size cap (``Limits.max_disk_mb``);
- its own PID namespace: when the program exits or is killed, the namespace's PID 1 dies and
  the kernel kills everything the program started (double forks and ``setsid`` included) before
  the run reports; ``kill(-1)`` reaches only its own processes, never another run's;
- the network namespace has only its own loopback: nothing on the host is reachable;
- as root, bwrap itself runs as ``nobody``, so the sandbox holds no privilege anywhere.

``rlimits``, the fallback when bwrap is missing or cannot create namespaces (announced once, loudly,
on stderr): a subprocess in its own process group, as root a network namespace and a drop to
``nobody``; a process that escapes the group can outlive the run, and the write guards below are
Python-level, so they can be bypassed (``posix.open``, ``os.system``).

Both: an isolated interpreter (``-I -S``) with an empty environment, ``setrlimit`` (CPU, address
space, processes, file size), and in-process guards that refuse sockets and writes outside the work
dir (a clear error for honest code; a layer, not the wall).

Used by ``humaneval`` and by code rewards in alignment: ``run_code(src).passed``. The bwrap
command line lives in sandbox_bwrap.py, the in-sandbox guards in sandbox_guard.py.
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
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from llmlab.tasks.sandbox_bwrap import WORK, boot, wait_bwrap

CLONE_NEWNET = 0x40000000
NOBODY = 65534


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
    max_disk_mb: int = 64  # all files together; bwrap only (its private /tmp, which holds cwd)

    def validate(self) -> None:
        for name in ("timeout", "cpu_seconds", "memory_mb", "max_procs", "max_file_mb",
                     "max_disk_mb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"sandbox limit {name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class _Mechanism:
    name: str  # "bwrap" | "rlimits"
    bwrap: str | None  # the bwrap binary, when name == "bwrap"
    why_not: str = ""  # when "rlimits": what is missing for bwrap
    disable_userns: bool = True  # bwrap >= 0.8; older ones lack --disable-userns


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


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _set_rlimits(limits: Limits) -> None:
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_mb * mb, limits.max_file_mb * mb))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _preexec(limits: Limits, drop: bool) -> None:
    """rlimits mechanism, in the child between fork and exec: limits, no network, no privileges."""
    _set_rlimits(limits)
    if drop:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare(CLONE_NEWNET)  # best effort; the in-child socket block still applies
        _drop_to_nobody()
    # After the uid change: RLIMIT_NPROC counts the processes of the (new) user.
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_procs, limits.max_procs))


def _preexec_bwrap(limits: Limits, drop: bool) -> None:
    """bwrap mechanism, before exec of bwrap: inherited limits; as root, bwrap runs as nobody.

    RLIMIT_NPROC is set later, by the boot code inside the sandbox: there it counts the processes
    of this run's own user namespace. Set here, it would cap all of nobody's processes together,
    and a fork bomb in one run would stop the next from starting.
    """
    _set_rlimits(limits)
    if drop:
        _drop_to_nobody()


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


def _run(source: str, limits: Limits, mech: _Mechanism) -> SandboxResult:
    drop = _can_drop()
    python = _interpreter(drop)
    with tempfile.TemporaryDirectory(prefix="llmlab-sandbox-") as tmp:
        out_p, err_p = Path(tmp) / "stdout", Path(tmp) / "stderr"
        prog = Path(tmp) / "main.py"
        prog.write_text(source, encoding="utf-8")
        if mech.bwrap:
            python = os.path.realpath(python)  # no venv indirection: the real install is bound
            work = WORK
        else:
            wdir = Path(tmp) / "work"
            wdir.mkdir()
            prog = prog.rename(wdir / "main.py")
            work = str(wdir)
            if drop:
                os.chmod(tmp, 0o711)  # nobody may enter, not list or write
                os.chown(wdir, NOBODY, NOBODY)
                os.chown(prog, NOBODY, NOBODY)
        t0 = time.monotonic()
        # stdout/stderr go to files (capped by RLIMIT_FSIZE), not pipes: a child spewing output
        # cannot fill our memory, and orphaned grandchildren cannot keep a pipe open.
        with out_p.open("wb") as out, err_p.open("wb") as err:
            common = dict(stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            if mech.bwrap:
                rc = wait_bwrap(str(mech.bwrap), mech.disable_userns, python, prog,
                                limits.timeout, limits.max_disk_mb, limits.max_procs,
                                lambda: _preexec_bwrap(limits, drop), common)
            else:
                rc = _wait_rlimits(python, prog, limits, drop, common)
        secs = time.monotonic() - t0
        status = "timeout" if rc is None else "passed" if rc == 0 else "failed"
        if rc is not None and -rc in (signal.SIGXCPU, signal.SIGKILL):
            status = "timeout"  # CPU limit reached
        n = limits.max_output_chars
        # The random temp dir would make identical runs report different tracebacks.
        out_s, err_s = (_tail(p, n).replace(work, "<sandbox>") for p in (out_p, err_p))
        return SandboxResult(status, rc, out_s, err_s, secs)


def _wait_rlimits(
    python: str, prog: Path, limits: Limits, drop: bool, common: dict[str, object]
) -> int | None:
    """Run the program as a plain subprocess; its return code, None on timeout."""
    proc = subprocess.Popen(
        [python, "-I", "-S", "-c", boot(), str(prog), "0"],
        cwd=prog.parent,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"},
        start_new_session=True,  # own process group: killpg reaches forked children
        preexec_fn=lambda: _preexec(limits, drop),
        **common,  # type: ignore[arg-type]
    )
    try:
        rc: int | None = proc.wait(timeout=limits.timeout)
    except subprocess.TimeoutExpired:
        rc = None
        proc.kill()
        proc.wait()  # reap the leader first, or killpg keeps finding its zombie
    _kill_group(proc.pid)  # and anything the code left running (if it stayed in the group)
    return rc


_MECH: _Mechanism | None = None
_MECH_LOCK = threading.Lock()


def _try_bwrap(mech: _Mechanism) -> str:
    """Empty when `mech` runs a program here, else why not."""
    try:
        r = _run("print('ok')", Limits(timeout=20.0), mech)
    except (OSError, RuntimeError) as e:
        return f"bwrap could not start: {e}"
    if r.passed and r.stdout.strip() == "ok":
        return ""
    return (f"bwrap is installed ({mech.bwrap}) but could not build a sandbox (user/PID/mount "
            f"namespaces disallowed?): exit {r.returncode} {r.stderr.strip()[-300:]}".rstrip())


def _warn(msg: str) -> None:
    print(f"llmlab sandbox: WARNING: {msg}", file=sys.stderr, flush=True)


def _probe(bwrap: str | None) -> _Mechanism:
    """bwrap when it is installed and can build a sandbox here; else rlimits, announced loudly."""
    if bwrap is None:
        why = "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
    else:
        mech = _Mechanism("bwrap", bwrap)
        why = _try_bwrap(mech)
        if not why:
            return mech
        if "disable-userns" in why:  # bwrap < 0.8: still far stronger than the fallback
            old = _Mechanism("bwrap", bwrap, disable_userns=False)
            if not _try_bwrap(old):
                _warn("this bwrap predates --disable-userns (0.8): sandboxed code may create "
                      "nested namespaces and mount a tmpfs past the disk cap.")
                return old
    _warn(f"{why}. Falling back to the weak 'rlimits' sandbox: untrusted code can write to /tmp "
          "and /dev/shm, read files, signal other processes of this user and outlive its run.")
    return _Mechanism("rlimits", None, why)


def _mechanism() -> _Mechanism:
    global _MECH
    with _MECH_LOCK:  # run_many's threads: one probe, one warning
        if _MECH is None:
            _MECH = _probe(shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin"))
        return _MECH


def sandbox_mechanism() -> str:
    """Which mechanism runs code here: "bwrap" (namespaces) or "rlimits" (weak fallback)."""
    return _mechanism().name


def run_code(source: str, limits: Limits | None = None) -> SandboxResult:
    """Run `source` as a script; "passed" iff it exits 0 within the limits."""
    if not isinstance(source, str):
        raise TypeError(f"sandbox: source must be str, got {type(source).__name__}")
    limits = limits or Limits()
    limits.validate()
    return _run(source, limits, _mechanism())


def run_many(
    sources: Sequence[str], limits: Limits | None = None, workers: int = 2
) -> list[SandboxResult]:
    """Run several programs, `workers` at a time, results in input order."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(lambda s: run_code(s, limits), sources))
