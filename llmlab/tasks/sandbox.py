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

Used by ``humaneval`` and by code rewards in alignment: ``run_code(src).passed``.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
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

CLONE_NEWNET = 0x40000000
NOBODY = 65534
# Inside the bwrap sandbox: the private tmpfs, and the work dir in it (fixed, so output is stable).
_TMP = "/tmp"
_WORK = "/tmp/sandbox"
_SHM_MB = 1  # /dev/shm: enough for a few semaphores, not a second disk

# Runs in the child before the untrusted file: limits that must be set inside the sandbox, then
# guards that block sockets and writes outside the cwd. argv: program path, RLIMIT_NPROC (0: keep).
_BOOT = r"""
import builtins, io, os, resource, socket, sys
if int(sys.argv[2]):
    resource.setrlimit(resource.RLIMIT_NPROC, (int(sys.argv[2]), int(sys.argv[2])))
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


def _python_binds(python: str) -> list[str]:
    """Read-only binds that make `python` (a resolved path) and its stdlib work in the sandbox."""
    prefixes = {str(Path(python).parent.parent)}  # <prefix>/bin/python3.X
    if os.path.realpath(sys.executable) == python:
        prefixes.add(os.path.realpath(sys.base_prefix))
    home = os.path.realpath(Path.home())
    binds: list[str] = []
    for pre in sorted(prefixes):
        if pre == "/usr" or pre.startswith("/usr/"):  # bound anyway
            continue
        if pre == "/" or home == pre or home.startswith(pre.rstrip("/") + "/"):
            # Binding it would show the whole home (or root) to the code: refuse, loudly.
            raise RuntimeError(f"sandbox: the Python install at {pre} would expose {home}")
        binds += ["--ro-bind", pre, pre]
    return binds


def _bwrap_argv(
    mech: _Mechanism, python: str, limits: Limits, prog_fd: int, info_fd: int
) -> list[str]:
    mb = 1024 * 1024
    argv = [
        str(mech.bwrap),
        "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try",
    ]
    if mech.disable_userns:  # no nested user namespace, in which the code could mount a tmpfs
        argv.append("--disable-userns")  # of its own, past the disk cap
    argv += [
        # bwrap exits as soon as the program does; then its PID 1 dies with it, and the kernel
        # kills whatever the program left running in the namespace.
        "--die-with-parent",
        "--new-session",  # no TIOCSTI into a terminal
        "--ro-bind", "/usr", "/usr",
    ]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):  # merged /usr: keep the symlink, the target is bound
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for f in ("/etc/ld.so.cache", "/etc/localtime"):
        argv += ["--ro-bind-try", f, f]
    argv += _python_binds(python)
    argv += [
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(_SHM_MB * mb), "--tmpfs", "/dev/shm",
        "--remount-ro", "/dev",  # the /dev tmpfs itself would be an uncapped disk
        "--size", str(limits.max_disk_mb * mb), "--perms", "1777", "--tmpfs", _TMP,
        "--dir", _WORK,
        "--file", str(prog_fd), f"{_WORK}/main.py",
        "--remount-ro", "/",
        "--chdir", _WORK,
        "--clearenv",
        "--setenv", "PATH", "/usr/bin:/bin",
        "--setenv", "LANG", "C.UTF-8",
        "--setenv", "PYTHONHASHSEED", "0",
        "--info-fd", str(info_fd),
        python, "-I", "-S", "-c", _BOOT, f"{_WORK}/main.py", str(limits.max_procs),
    ]
    return argv


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


def _sandbox_init(info_r: int, bwrap_pid: int, deadline: float) -> int | None:
    """A pidfd for the sandbox's PID 1, from bwrap's --info-fd (written right after clone)."""
    data = b""
    poll = select.poll()
    poll.register(info_r, select.POLLIN)
    while b"}" not in data and poll.poll(max(0, int((deadline - time.monotonic()) * 1000))):
        chunk = os.read(info_r, 4096)
        if not chunk:
            break  # bwrap failed before the clone
        data += chunk
    try:
        pid = int(json.loads(data)["child-pid"])
        pidfd = os.pidfd_open(pid)
        # Only bwrap writes that pipe, but we will SIGKILL this PID: be sure it is bwrap's child,
        # checked after pidfd_open so that the PID cannot be reused in between.
        with open(f"/proc/{pid}/stat", "rb") as f:
            ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    if ppid != bwrap_pid:
        os.close(pidfd)
        return None
    return pidfd


def _run(source: str, limits: Limits, mech: _Mechanism) -> SandboxResult:
    drop = _can_drop()
    python = _interpreter(drop)
    with tempfile.TemporaryDirectory(prefix="llmlab-sandbox-") as tmp:
        out_p, err_p = Path(tmp) / "stdout", Path(tmp) / "stderr"
        prog = Path(tmp) / "main.py"
        prog.write_text(source, encoding="utf-8")
        if mech.bwrap:
            python = os.path.realpath(python)  # no venv indirection: the real install is bound
            work = _WORK
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
                rc = _wait_bwrap(mech, python, prog, limits, drop, common)
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
        [python, "-I", "-S", "-c", _BOOT, str(prog), "0"],
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


def _wait_bwrap(
    mech: _Mechanism, python: str, prog: Path, limits: Limits, drop: bool, common: dict[str, object]
) -> int | None:
    """Run the program under bwrap; its return code (-N: killed by signal N), None on timeout.

    Returns only once every process of the run is gone.
    """
    deadline = time.monotonic() + limits.timeout
    info_r, info_w = os.pipe()
    prog_fd = os.open(prog, os.O_RDONLY)
    init = None
    try:
        proc = subprocess.Popen(
            _bwrap_argv(mech, python, limits, prog_fd, info_w),
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
            pass_fds=(prog_fd, info_w),
            start_new_session=True,
            preexec_fn=lambda: _preexec_bwrap(limits, drop),
            **common,  # type: ignore[arg-type]
        )
        os.close(info_w)
        info_w = -1
        init = _sandbox_init(info_r, proc.pid, deadline)
        try:
            rc: int | None = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            rc = None
            if init is not None:  # PID 1 first: the kernel then kills the whole namespace
                signal.pidfd_send_signal(init, signal.SIGKILL)
            proc.kill()  # and bwrap, whose death kills PID 1 too (--die-with-parent)
            proc.wait()
        if init is not None:
            # PID 1 dies with bwrap, and exits only once every process of its namespace is gone.
            poll = select.poll()
            poll.register(init, select.POLLIN)
            poll.poll(5000)
    finally:
        for fd in (info_r, info_w, prog_fd, -1 if init is None else init):
            if fd >= 0:
                os.close(fd)
    # bwrap reports a child killed by signal N as exit status 128 + N; report it as Popen does.
    if rc is not None and 128 < rc < 128 + signal.NSIG:
        rc = 128 - rc
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
