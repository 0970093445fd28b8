"""The bubblewrap mechanism of the sandbox (see sandbox.py): the bwrap command line that gives
each run fresh namespaces, a read-only /usr and capped private tmpfs mounts, and the wait that
returns only once every process of the run is gone."""

from __future__ import annotations

import functools
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


@functools.cache
def boot() -> str:
    """The guard script both mechanisms run before the untrusted program (read on first use,
    not at import: `llmlab --help` imports this module through eval)."""
    return (Path(__file__).parent / "sandbox_guard.py").read_text(encoding="utf-8")


# Inside the bwrap sandbox: the private tmpfs, and the work dir in it (fixed, so output is stable).
TMP = "/tmp"
WORK = "/tmp/sandbox"
SHM_MB = 1  # /dev/shm: enough for a few semaphores, not a second disk


def python_binds(python: str) -> list[str]:
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


def bwrap_argv(bwrap: str, disable_userns: bool, python: str, disk_mb: int, max_procs: int,
               prog_fd: int, info_fd: int) -> list[str]:
    mb = 1024 * 1024
    argv = [
        bwrap,
        "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try",
    ]
    if disable_userns:  # no nested user namespace, in which the code could mount a tmpfs
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
    argv += python_binds(python)
    argv += [
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(SHM_MB * mb), "--tmpfs", "/dev/shm",
        "--remount-ro", "/dev",  # the /dev tmpfs itself would be an uncapped disk
        "--size", str(disk_mb * mb), "--perms", "1777", "--tmpfs", TMP,
        "--dir", WORK,
        "--file", str(prog_fd), f"{WORK}/main.py",
        "--remount-ro", "/",
        "--chdir", WORK,
        "--clearenv",
        "--setenv", "PATH", "/usr/bin:/bin",
        "--setenv", "LANG", "C.UTF-8",
        "--setenv", "PYTHONHASHSEED", "0",
        "--info-fd", str(info_fd),
        python, "-I", "-S", "-c", boot(), f"{WORK}/main.py", str(max_procs),
    ]
    return argv


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


def wait_bwrap(bwrap: str, disable_userns: bool, python: str, prog: Path, timeout: float,
               disk_mb: int, max_procs: int, preexec: Callable[[], None],
               common: dict[str, object]) -> int | None:
    """Run the program under bwrap; its return code (-N: killed by signal N), None on timeout.
    `preexec` runs in the child before bwrap's exec (limits, and as root the drop to nobody).

    Returns only once every process of the run is gone.
    """
    deadline = time.monotonic() + timeout
    info_r, info_w = os.pipe()
    prog_fd = os.open(prog, os.O_RDONLY)
    init = None
    try:
        proc = subprocess.Popen(
            bwrap_argv(bwrap, disable_userns, python, disk_mb, max_procs, prog_fd, info_w),
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
            pass_fds=(prog_fd, info_w),
            start_new_session=True,
            preexec_fn=preexec,
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
