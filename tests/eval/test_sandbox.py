"""Hostile programs are contained: each is scored as a failure, quickly, leaving no trace."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llmlab.tasks import sandbox
from llmlab.tasks.sandbox import Limits, run_code, run_many, sandbox_mechanism
from llmlab.tasks.sandbox_bwrap import python_binds

FAST = Limits(timeout=3.0, cpu_seconds=2, memory_mb=256, max_procs=8)


def test_ordinary_code_passes_and_failing_asserts_fail() -> None:
    ok = run_code("def f(x):\n    return x * 2\nassert f(3) == 6\nprint('fine')", FAST)
    assert ok.passed and ok.stdout.strip() == "fine"
    bad = run_code("assert 1 == 2", FAST)
    assert bad.status == "failed" and "AssertionError" in bad.stderr


def test_code_may_use_its_own_directory() -> None:
    r = run_code("open('x.txt', 'w').write('hi')\nassert open('x.txt').read() == 'hi'", FAST)
    assert r.passed, r.stderr


@pytest.mark.parametrize(
    "src",
    [
        "while True:\n    pass",  # CPU
        "import time\ntime.sleep(60)",  # wall clock
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    ],
    ids=["infinite-loop", "sleep", "fork-bomb"],
)
def test_runaway_code_times_out(src: str) -> None:
    t0 = time.monotonic()
    r = run_code(src, FAST)
    assert r.status == "timeout" and not r.passed
    assert time.monotonic() - t0 < FAST.timeout + 3  # never hung


def test_memory_bomb_is_refused() -> None:
    r = run_code("x = bytearray(4 * 1024**3)\nprint('allocated')", FAST)
    assert not r.passed and "allocated" not in r.stdout


def test_writes_outside_its_directory_are_refused(tmp_path: Path) -> None:
    for target in (tmp_path / "pwned.txt", Path("/tmp") / f"llmlab-pwned-{time.time_ns()}"):
        for src in (
            f"open({str(target)!r}, 'w').write('x')",
            f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))",
        ):
            r = run_code(src, FAST)
            assert not r.passed and not target.exists(), src


@pytest.mark.parametrize(
    "src",
    [
        "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)",
        "import _socket\ns = _socket.socket()\ns.settimeout(1)\ns.connect(('1.1.1.1', 80))",
    ],
    ids=["socket", "raw-_socket"],
)
def test_network_is_blocked(src: str) -> None:
    r = run_code(src + "\nprint('connected')", FAST)
    assert not r.passed and "connected" not in r.stdout


def test_environment_is_empty_and_isolated() -> None:
    r = run_code("import os, sys\nassert 'HTTP_PROXY' not in os.environ\nprint(sys.flags.isolated)")
    assert r.passed and r.stdout.strip() == "1"


def test_run_many_keeps_order() -> None:
    rs = run_many(["print(1)", "raise SystemExit(3)", "print(3)"], FAST, workers=2)
    assert [r.status for r in rs] == ["passed", "failed", "passed"]
    assert rs[1].returncode == 3


def test_bad_limits_are_named() -> None:
    with pytest.raises(ValueError, match="memory_mb"):
        run_code("pass", Limits(memory_mb=0))


def test_a_program_killed_by_a_signal_fails_with_that_signal() -> None:
    # The program is not its namespace's init, which would ignore signals it has no handler for.
    r = run_code("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\nprint('survived')", FAST)
    assert r.status == "failed" and r.returncode == -15 and "survived" not in r.stdout


def test_the_mechanism_is_named() -> None:
    assert sandbox_mechanism() in ("bwrap", "rlimits")


@pytest.mark.parametrize(
    "bwrap", [None, "/nonexistent/bwrap", "/bin/false"], ids=["missing", "unrunnable", "failing"]
)
def test_falling_back_to_the_weak_sandbox_is_loud(
    bwrap: str | None, capfd: pytest.CaptureFixture[str]
) -> None:
    mech = sandbox._probe(bwrap)
    err = capfd.readouterr().err
    assert mech.name == "rlimits" and "bwrap" in mech.why_not
    assert "WARNING" in err and mech.why_not in err and "weak" in err


def test_the_fallback_still_judges_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_MECH", sandbox._Mechanism("rlimits", None, "test"))
    quick = Limits(timeout=1.0, cpu_seconds=1, memory_mb=256)
    rs = run_many(["print('ok')", "assert False", "import time\ntime.sleep(9)"], quick)
    assert [r.status for r in rs] == ["passed", "failed", "timeout"]
    assert rs[0].stdout == "ok\n" and "AssertionError" in rs[1].stderr


def test_a_python_install_holding_the_home_is_not_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # Binding ~/bin/python3's prefix, or /bin/python3's, would show the code the whole home.
    monkeypatch.setattr(sandbox.Path, "home", staticmethod(lambda: sandbox.Path("/opt/me")))
    for python in ("/opt/me/bin/python3", "/opt/bin/python3", "/bin/python3"):
        with pytest.raises(RuntimeError, match="would expose /opt/me"):
            python_binds(python)
    ok = "/opt/me/.pyenv/versions/3.11.7"
    assert python_binds(ok + "/bin/python3.11") == ["--ro-bind", ok, ok]
    assert python_binds("/usr/local/bin/python3.11") == []
