"""The lock (requirements/*.txt): fresh against pyproject.toml, parsed as pip parses it, and a
changed dependency range is refused with the command that fixes it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import lock  # noqa: E402


def test_committed_lock_is_fresh_and_cpu_only() -> None:
    assert lock.check() == []


def test_entries_agree_with_packaging() -> None:
    for layer in lock.LAYERS:
        text = lock.layer_path(layer).read_text()
        ents = lock.entries(text)
        heads = [ln.split(" ")[0] for ln in text.splitlines()
                 if ln and not ln[0].isspace() and not ln.startswith("#")]
        assert len(ents) == len(heads) > 0, layer
        for head in heads:
            req = Requirement(head)
            (spec,) = req.specifier
            assert spec.operator == "==", head
            assert ents[lock.norm(req.name)][0] == spec.version, head
            assert "--hash=sha256:" in ents[lock.norm(req.name)][1], head


def test_a_changed_range_makes_the_lock_stale(tmp_path: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    env = {"LLMLAB_LOCK_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "lock.py"), "--check"],
                              capture_output=True, text=True, env=env, timeout=60)

    assert run().returncode == 0
    text = (tmp_path / "pyproject.toml").read_text()
    assert '"tqdm>=4.66"' in text
    (tmp_path / "pyproject.toml").write_text(text.replace('"tqdm>=4.66"', '"tqdm>=4.67"'))
    r = run()
    assert r.returncode == 1
    assert "stale" in r.stderr and "run bash scripts/lock.sh" in r.stderr, r.stderr
    # A comment is not an input: editing a reason needs no re-lock.
    (tmp_path / "pyproject.toml").write_text(text)
    with (tmp_path / "requirements" / "constraints.txt").open("a") as f:
        f.write("# a note\n")
    assert run().returncode == 0


def test_cuda_builds_are_refused() -> None:
    assert lock.cuda_problems({"torch": "2.13.0+cpu", "numpy": "2.4.6"}) == []
    assert lock.cuda_problems({"torch": "2.13.0"}) == ["torch==2.13.0 (not the +cpu wheel)"]
    assert lock.cuda_problems({"nvidia-cublas": "13.0"}) == ["nvidia-cublas==13.0"]
