"""One real server per test session (uvicorn in a thread on a free port), models loaded once."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Live:
    url: str
    hub: Any


@contextmanager
def live_server(cfg: Any, lm: Any, enc: Any) -> Iterator[Live]:
    """`create_app(cfg)` served by uvicorn in a thread, with the session's models injected."""
    from llmlab.server.app import create_app

    port = _free_port()
    app = create_app(cfg, f"http://127.0.0.1:{port}")  # judge runs ask the server itself
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + 30
    while not srv.started:
        if time.time() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    # The session's models, shared with the server: each loads once.
    app.state.hub._models.update(lm=lm, enc=enc)
    try:
        yield Live(f"http://127.0.0.1:{port}", app.state.hub)
    finally:
        srv.should_exit = True
        t.join(timeout=10)


@pytest.fixture(scope="session")
def server(lm: Any, enc: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from llmlab.server.hub import ServerConfig

    # fp32 generation: skips building the int8 copy, keeps the session short. Free paths on:
    # the tests send checkpoint and tokenizer directories. Training runs go to a temp dir.
    cfg = ServerConfig(fast_decode=False, max_new_tokens=64, allow_local_models=True,
                       runs_dir=str(tmp_path_factory.mktemp("runs")))
    with live_server(cfg, lm, enc) as live:
        yield live


@pytest.fixture(scope="session")
def lm() -> Any:
    import llmlab

    return llmlab.load("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smol_hf(lm: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """transformers' load of the HF export of the session's SmolLM2 (fp32): the outside
    reference for logprobs, exported once per session."""
    from next_token_ref import hf_export

    return hf_export(lm, tmp_path_factory.mktemp("hf") / "smol")


@pytest.fixture(scope="session")
def enc() -> Any:
    import llmlab

    return llmlab.load("minilm-l6-v2")


@pytest.fixture(scope="module")
def page(server: Live) -> Iterator[Any]:
    """A chromium tab (1300x1000) per browser-test module, on the session's server."""
    from pathlib import Path

    from playwright import sync_api  # imported here: only the browser tests need Playwright

    from .browser import ARGS, ARTIFACTS, CHROMIUM

    # scripts/setup.sh dev installs Debian's chromium; without it these tests must fail, not skip.
    assert Path(CHROMIUM).exists(), "chromium not installed (apt-get install chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1300, "height": 1000})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real `llmlab pretrain` run dir: a 512-id BPE on KJV text, 2 layers x 2 heads."""
    from train_common import TINY, cli, make_data

    d = tmp_path_factory.mktemp("local")
    data = make_data(d)
    cli("pretrain", "--out", str(d / "tinyrun"), "--data", str(data), *TINY,
        "--max-steps", "2", "--eval-every", "2", "--ckpt-every", "2")
    return d / "tinyrun"
