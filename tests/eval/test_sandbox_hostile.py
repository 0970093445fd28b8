"""Hostile programs that get past Python-level guards are contained by the OS sandbox (bwrap).

Each program uses a route the in-process guards do not see (``posix``, ``_io``, ``_socket``, a
shell, signals, forks), so only the namespaces and mounts stop it. The host side is checked from
outside: files that must not appear, a listener that must get no connection, processes that must
not survive the run.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmlab.tasks import sandbox
from llmlab.tasks.sandbox import Limits, run_code, run_many

LIM = Limits(timeout=5.0, cpu_seconds=2, memory_mb=256, max_procs=8, max_disk_mb=32)
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _strong_sandbox() -> None:
    # scripts/setup.sh installs bubblewrap: without it these must fail, not skip, as must a
    # fallback to the weak sandbox, which cannot contain them.
    assert shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin"), (
        "bubblewrap not installed (apt-get install bubblewrap; scripts/setup.sh does)")
    mech = sandbox._mechanism()
    assert mech.name == "bwrap", f"bwrap is installed but unusable: {mech.why_not}"


@pytest.fixture
def shared() -> Iterator[Path]:
    """A host folder anyone may write (0777, no sticky bit): only the sandbox can keep code out."""
    d = Path(tempfile.mkdtemp(prefix="llmlab-hostile-"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _alive(name: str) -> list[int]:
    """Host PIDs whose process name (comm) is `name`."""
    pids = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and (p / "comm").read_text().strip() == name:
                pids.append(int(p.name))
        except OSError:
            pass
    return pids


def test_double_forked_daemon_dies_with_its_run(shared: Path) -> None:
    name = "llsbx" + secrets.token_hex(4)  # a comm of at most 15 characters
    marker = shared / "survived"
    src = f"""
import ctypes, os, posix, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)  # PR_SET_NAME
        time.sleep(1.0)
        for d in ({str(marker)!r}, '/tmp/sandbox/survived'):
            try:
                posix.close(posix.open(d, os.O_WRONLY | os.O_CREAT, 0o666))
            except OSError:
                pass
        time.sleep(30)
    os._exit(0)
time.sleep(0.3)  # the daemon has renamed itself by now
"""
    r = run_code(src, LIM)
    assert r.passed, r.stderr
    assert not _alive(name), "a process of the run outlived it"
    time.sleep(1.5)
    assert not marker.exists() and not _alive(name)
    # Nothing left over to eat the next runs' process or CPU budget.
    assert [x.status for x in run_many(["print(1)"] * 4, LIM, workers=2)] == ["passed"] * 4


def test_timeout_kills_every_process_of_the_run() -> None:
    name = "llsbx" + secrets.token_hex(4)
    src = f"""
import ctypes, os, time
if os.fork() == 0:
    os.setsid()  # out of the process group that a group kill would reach
    ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)
    time.sleep(60)
time.sleep(60)
"""
    r = run_code(src, Limits(timeout=1.0, cpu_seconds=2, memory_mb=256))
    assert r.status == "timeout"
    assert not _alive(name), "a process of the run outlived its timeout"


def test_kill_everything_cannot_touch_other_runs() -> None:
    victim = "import time\ntime.sleep(1.0)\nprint('alive')"
    attacker = """
import os, signal, time
time.sleep(0.3)
for pid in os.listdir('/proc'):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
os.kill(-1, signal.SIGKILL)
"""
    rs = run_many([victim, attacker, victim], LIM, workers=3)
    assert [(r.status, r.stdout.strip()) for r in (rs[0], rs[2])] == [("passed", "alive")] * 2


def test_writes_that_bypass_the_guards_stay_inside(shared: Path) -> None:
    tag = secrets.token_hex(4)
    places = [Path("/tmp"), Path("/dev/shm"), PROJECT, shared]
    victim = shared / "victim.txt"
    victim.write_text("keep me")
    victim.chmod(0o666)
    writers = {
        "posix": "import os, posix\nposix.write(posix.open({t!r}, os.O_WRONLY | os.O_CREAT), b'x')",
        "fileio": "import _io\n_io.FileIO({t!r}, 'w').write(b'x')",
        "system": "import os\nos.system('echo x > {t}')",
        "shell": "import subprocess\nsubprocess.run(['/bin/sh', '-c', 'echo x > {t}'])",
    }
    targets = [d / f"llmlab-pwned-{tag}-{w}" for d in places for w in writers]
    programs = [writers[t.name.rsplit("-", 1)[1]].format(t=str(t)) for t in targets]
    programs.append(f"import posix\nposix.unlink({str(victim)!r})")
    try:
        run_many(programs, LIM, workers=2)
        assert [t for t in targets if t.exists()] == []
        assert victim.read_text() == "keep me"
    finally:
        for t in targets:
            t.unlink(missing_ok=True)


def test_total_disk_use_is_capped() -> None:
    # Each file is under the per-file limit (RLIMIT_FSIZE); only a total cap stops the sum.
    src = """
import os, posix
n = 0
try:
    for i in range(12):
        fd = posix.open(f'f{i}', os.O_WRONLY | os.O_CREAT)
        for _ in range(10):
            posix.write(fd, bytes(1 << 20))
        posix.close(fd)
        n += 1
finally:
    print(n)
"""
    r = run_code(src, LIM)
    assert not r.passed and int(r.stdout.split()[-1]) * 10 <= LIM.max_disk_mb


def test_host_loopback_is_unreachable() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        src = (f"import _socket\ns = _socket.socket()\ns.settimeout(1)\n"
               f"s.connect(('127.0.0.1', {port}))\nprint('connected')")
        r = run_code(src, LIM)
        assert not r.passed and "connected" not in r.stdout
        srv.setblocking(False)
        with pytest.raises(BlockingIOError):
            srv.accept()


def test_home_project_and_host_files_are_invisible(shared: Path) -> None:
    secret = shared / "secret.txt"
    secret.write_text("s3cret")
    secret.chmod(0o644)  # readable by anyone on the host
    paths = [str(secret), str(Path.home()), str(PROJECT)]
    src = f"""
import os
for p in {paths!r}:
    try:
        print('LISTED', os.listdir(p)) if os.path.isdir(p) else print('READ', open(p).read())
    except OSError as e:
        print('refused', p, type(e).__name__)
"""
    r = run_code(src, LIM)
    assert r.passed and "LISTED" not in r.stdout and "READ" not in r.stdout, r.stdout + r.stderr


def test_well_behaved_stdlib_code_still_passes() -> None:
    src = """
import collections, functools, hashlib, heapq, itertools, json, math, re, string, tempfile
from fractions import Fraction
from typing import List

def sort_even(l: List[int]) -> List[int]:
    evens = sorted(l[::2])
    return [evens[i // 2] if i % 2 == 0 else x for i, x in enumerate(l)]

@functools.lru_cache(maxsize=None)
def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)

assert sort_even([5, 6, 3, 4]) == [3, 6, 5, 4]
assert fib(30) == 832040 and math.gcd(12, 18) == 6
assert heapq.nsmallest(2, [5, 1, 4]) == [1, 4] and Fraction(1, 3) * 3 == 1
assert collections.Counter('abca')['a'] == 2 and re.findall(r'\\d+', 'a1b22') == ['1', '22']
assert json.loads(json.dumps({'k': [1]})) == {'k': [1]} and string.ascii_lowercase[0] == 'a'
assert len(list(itertools.permutations(range(4)))) == 24
assert hashlib.sha256(b'x').hexdigest()[:4] == '2d71'
with tempfile.TemporaryDirectory(dir='.') as d:
    open(f'{d}/x.txt', 'w').write('ok')
print('ok')
"""
    r = run_code(src, LIM)
    assert r.passed and r.stdout.strip() == "ok", r.stderr


def test_no_nested_user_namespace() -> None:
    # In one, the code would hold capabilities: enough to mount a tmpfs of its own, uncapped.
    src = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x10000000 | 0x00020000) != 0, 'made a user and mount namespace'
"""
    r = run_code(src, LIM)
    assert r.passed, r.stderr


def test_a_bwrap_without_disable_userns_is_used_with_a_warning(
    shared: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    fake = shared / "bwrap"  # what bwrap 0.5-0.7 says to an option it does not know
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = --disable-userns ] && "
                    "{ echo 'bwrap: Unknown option --disable-userns' >&2; exit 1; }; done\n"
                    f"exec {shutil.which('bwrap', path='/usr/bin:/bin:/usr/local/bin')} \"$@\"\n")
    fake.chmod(0o755)
    shared.chmod(0o755)
    mech = sandbox._probe(str(fake))
    assert mech.name == "bwrap" and not mech.disable_userns
    assert "predates --disable-userns" in capfd.readouterr().err
