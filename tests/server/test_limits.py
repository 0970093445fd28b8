"""Memory stays bounded: upload sessions expire and are capped, caps are settings that
reject nonsense, and an expired session is a clear 404, not a silent default."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from llmlab.server.hub import ServerConfig
from llmlab.server.rag_routes import UploadSessions


def test_upload_sessions_lru_cap_and_ttl(tmp_path: Path) -> None:
    s = UploadSessions(tmp_path, cap=2, ttl=0.3)
    a, gone = s.open("a" * 32)
    (a / "doc.txt").write_text("x")
    assert gone == [] and a.is_dir()
    s.open("b" * 32)
    s.get("a" * 32)  # a is now the most recently used
    _, gone = s.open("c" * 32)
    assert gone == ["b" * 32] and not (tmp_path / ("b" * 32)).exists() and len(s) == 2
    time.sleep(0.4)
    assert sorted(s.expire()) == ["a" * 32, "c" * 32]
    assert len(s) == 0 and not a.exists() and s.get("a" * 32) is None


def test_server_config_caps_are_validated() -> None:
    with pytest.raises(ValueError, match="kb_cache"):
        ServerConfig(kb_cache=0)
    with pytest.raises(ValueError, match="session_ttl_s"):
        ServerConfig(session_ttl_s=-1)


def test_serve_flags_map_to_config_fields() -> None:
    import argparse

    from llmlab.server.cli import add_commands

    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers())
    a = p.parse_args(["serve", "--kb-cache", "2", "--session-ttl-s", "60", "--max-batch", "4"])
    assert (a.kb_cache, a.session_ttl_s, a.max_batch) == (2, 60.0, 4)


def test_unknown_session_is_a_404(server) -> None:  # noqa: ANN001
    r = httpx.post(
        f"{server.url}/api/rag/query", json={"query": "open a file", "session": "f" * 32}
    )
    assert r.status_code == 404 and r.json()["error"]["param"] == "session"


def test_model_dirs_are_checked_and_named(tmp_path: Path) -> None:
    from llmlab.server.hub import local_model_dirs

    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "llmlab.json").write_text("{}")
    (tmp_path / "other" / "run").mkdir(parents=True)
    (tmp_path / "other" / "run" / "config.json").write_text("{}")
    dirs = local_model_dirs([str(tmp_path / "run"), str(tmp_path / "other" / "run")])
    assert dirs == {"run": tmp_path / "run", "run-2": tmp_path / "other" / "run"}
    with pytest.raises(ValueError, match="empty.*not a model directory"):
        (tmp_path / "empty").mkdir()
        local_model_dirs([str(tmp_path / "empty")])


def test_serve_rejects_a_model_dir_without_a_model(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        [sys.executable, "-m", "llmlab.cli", "serve", "--lazy", "--model-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(root), "PATH": ""},
    )
    assert r.returncode != 0 and "not a model directory" in r.stderr and str(tmp_path) in r.stderr


def test_model_menu_and_unknown_local_model(server) -> None:  # noqa: ANN001
    m = httpx.get(f"{server.url}/api/models").json()
    assert [x["id"] for x in m["attention"]] == ["smollm2", "minilm"] and m["paths"] is True
    r = httpx.post(f"{server.url}/api/attention", json={"text": "hi", "model": "local:nope"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_free_paths_are_opt_in(lm, enc, tmp_path) -> None:  # noqa: ANN001
    """By default a request can name only registered models and --model-dir runs: a path
    would read the server's disk (`llmlab serve --allow-local-models` turns them on)."""
    from llmlab.server.hub import ServerConfig

    from .conftest import live_server

    with live_server(ServerConfig(fast_decode=False), lm, enc) as s:
        assert httpx.get(f"{s.url}/api/models").json()["paths"] is False
        for path in ("/etc", str(tmp_path)):
            r = httpx.post(f"{s.url}/api/attention", json={"text": "hi", "model": path})
            assert r.status_code == 403 and r.json()["error"]["param"] == "model", r.text
            r = httpx.post(f"{s.url}/api/tokenize", json={"text": "hi", "tokenizer": path})
            assert 400 <= r.status_code < 500 and r.json()["error"]["param"] == "tokenizer"


def test_model_lock_is_granted_in_arrival_order() -> None:
    """The server's model lock: a call that arrives while the decoder holds it goes next,
    before the decoder's next step and before later arrivals (a plain Lock gives no order)."""
    import threading

    from llmlab.server.hub import FairLock

    lock, order = FairLock(), []

    def call(i: int) -> None:
        with lock:
            order.append(i)

    with lock, lock:  # re-entrant, as the loader needs
        threads = []
        for i in range(8):
            t = threading.Thread(target=call, args=(i,))
            t.start()
            threads.append(t)
            deadline = time.time() + 10
            while lock.waiting < i + 1 and time.time() < deadline:  # arrived, in this order
                time.sleep(0.001)
        assert lock.waiting == 8
    with lock:  # the releasing thread comes back at once, as the decoder does: it waits its turn
        order.append("again")
    for t in threads:
        t.join(10)
    assert order == [*range(8), "again"]
