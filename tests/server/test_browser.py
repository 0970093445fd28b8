"""The playground in a real browser (Debian's chromium driven by Playwright).

Screenshots of every page land in tests/artifacts/ (git-ignored; or $LLMLAB_ARTIFACTS) for
a human to look at."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright import sync_api

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# LLMLAB_ARTIFACTS lets CI collect the screenshots from a folder of its choosing.
ARTIFACTS = Path(os.environ.get("LLMLAB_ARTIFACTS") or Path(__file__).parents[1] / "artifacts")


@pytest.fixture(scope="module")
def page(server) -> Iterator:  # noqa: ANN001
    # scripts/setup.sh dev installs Debian's chromium; without it these tests must fail, not skip.
    assert Path(CHROMIUM).exists(), "chromium not installed (apt-get install chromium)"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1300, "height": 1000})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def shot(pg, name: str) -> None:  # noqa: ANN001
    path = ARTIFACTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def cells(pg) -> list[str]:  # noqa: ANN001
    return pg.eval_on_selector_all("[data-testid=heatmap] rect.c", "rs => rs.map(r => r.dataset.w)")


def wait_change(pg, before: list[str]) -> list[str]:  # noqa: ANN001
    pg.wait_for_function(
        "b => JSON.stringify([...document.querySelectorAll('[data-testid=heatmap] rect.c')]"
        ".map(r => r.dataset.w)) !== b",
        arg=json.dumps(before, separators=(",", ":")),
    )
    return cells(pg)


def set_range(pg, testid: str, value: int) -> None:  # noqa: ANN001
    pg.eval_on_selector(
        f"[data-testid={testid}]",
        "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }",
        value,
    )


def test_attention_click_layer_head_mode(page, server) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/#/attention")
    pg.fill("[data-testid=att-text]", "The cat sat on the mat")
    pg.wait_for_selector("[data-testid=token-5]")
    pg.wait_for_function("document.querySelector('[data-testid=tokens]').children.length === 6")
    pg.click("[data-testid=token-3]")
    assert pg.get_attribute("[data-testid=row-highlight]", "data-row") == "3"
    assert "#3" in pg.inner_text("[data-stat=selected]")
    assert "tokens\n6" in pg.inner_text("[data-testid=stats]").replace("\t", "\n")
    before = cells(pg)
    set_range(pg, "att-layer", 5)
    after_layer = wait_change(pg, before)
    pg.select_option("[data-testid=att-head]", "4")
    after_head = wait_change(pg, after_layer)
    pg.select_option("[data-testid=att-mode]", "bidirectional")
    after_mode = wait_change(pg, after_head)
    n = 6  # causal maps are zero above the diagonal; bidirectional ones are not
    assert all(float(after_head[i * n + j]) == 0 for i in range(n) for j in range(i + 1, n))
    assert any(float(after_mode[i * n + j]) > 0 for i in range(n) for j in range(i + 1, n))
    assert "bidirectional" in pg.inner_text("[data-testid=stats]")
    shot(pg, "attention")


def test_user_text_is_escaped(page, server) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/#/attention")
    evil = "<script>window.__xss=1</script><img src=x onerror=window.__xss=2>"
    pg.fill("[data-testid=att-text]", evil)
    pg.wait_for_function(
        "[...document.querySelectorAll('.tok')].some(b => b.textContent.includes('script'))"
    )
    assert pg.evaluate("window.__xss") is None
    assert pg.eval_on_selector_all("#app script, #app img", "e => e.length") == 0
    joined = "".join(pg.eval_on_selector_all(".tok", "bs => bs.map(b => b.textContent)"))
    assert "<script>" in joined.replace("·", " ")
    shot(pg, "attention-escaped")


def test_lora_rank_slider_changes_counts(page, server) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/#/lora")
    pg.wait_for_selector("[data-stat=lora]")
    pg.wait_for_selector("[data-testid=spectrum]")
    assert pg.inner_text("[data-stat=lora]") == f"{8 * 2 * 4096:,}"
    set_range(pg, "lora-r", 64)
    pg.wait_for_function("document.querySelector('[data-stat=lora]').textContent === '524,288'")
    assert pg.inner_text("[data-stat=scale]") == "0.250"
    assert pg.inner_text("[data-stat=error]").endswith("%")
    shot(pg, "lora")


def test_rag_query_shows_ranked_chunks_and_cited_answer(page, server) -> None:  # noqa: ANN001
    assert httpx.get(f"{server.url}/api/rag/info").json()["available"]
    pg = page
    pg.goto(f"{server.url}/#/rag")
    pg.click("[data-testid=rag-go]")
    # The first query builds the knowledge base (~200 MiniLM chunk vectors): slow on a busy box.
    pg.wait_for_selector("[data-testid=rag-hits] li", timeout=300_000)
    pg.wait_for_selector("[data-stage=llm].done", timeout=180_000)
    pg.wait_for_function(
        "/\\[\\d+\\]/.test(document.querySelector('[data-testid=rag-answer]').textContent)",
        timeout=180_000,
    )
    shot(pg, "rag")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:  # noqa: ANN001
    """A real `llmlab pretrain` run dir: a 512-id BPE on KJV text, 2 layers x 2 heads."""
    from train_common import TINY, cli, make_data

    d = tmp_path_factory.mktemp("local")
    data = make_data(d)
    cli("pretrain", "--out", str(d / "tinyrun"), "--data", str(data), *TINY,
        "--max-steps", "2", "--eval-every", "2", "--ckpt-every", "2")
    return d / "tinyrun"


def test_attention_on_a_local_checkpoint(page, local_run, lm, enc) -> None:  # noqa: ANN001
    import llmlab
    from llmlab.explain.attention import run_attention, softmax_with_temperature
    from llmlab.server.hub import ServerConfig

    from .conftest import live_server

    text = "And God said, Let there be light"
    with live_server(ServerConfig(fast_decode=False, model_dirs=[str(local_run)]), lm, enc) as s:
        models = httpx.get(f"{s.url}/api/models").json()["attention"]
        assert {"id": "local:tinyrun", "label": "tinyrun (local)", "path": str(local_run)} in models
        pg = page
        pg.goto(f"{s.url}/#/attention")
        opt = "[data-testid=att-model] option[value='local:tinyrun']"
        pg.wait_for_selector(opt, state="attached")
        pg.select_option("[data-testid=att-model]", "local:tinyrun")
        pg.fill("[data-testid=att-text]", text)
        pg.wait_for_function(
            "document.querySelector('[data-stat=model]')?.textContent === 'tinyrun'"
        )
        pg.wait_for_function("document.querySelector('[data-testid=tokens]').children.length > 1")
        stats = pg.inner_text("[data-testid=stats]").replace("\t", "\n")
        assert "layers\n2" in stats and "heads\n2" in stats
        # The map is the checkpoint's own attention, as the library computes it.
        ref = run_attention(llmlab.load(local_run), text, None)
        w = softmax_with_temperature(ref.scores[0], 1.0)[0]
        n = w.shape[0]
        assert pg.eval_on_selector_all(".tok", "bs => bs.length") == n
        got = [float(x) for x in cells(pg)]
        want = [float(w[i, j]) for i in range(n) for j in range(n)]
        assert got == pytest.approx(want, abs=1e-3)
        shot(pg, "attention-local")


def test_chat_page_streams_the_models_greedy_reply(page, server, lm) -> None:  # noqa: ANN001
    from llmlab.generate.chat import chat_ids
    from llmlab.generate.engine import complete, make_params

    pg = page
    pg.goto(f"{server.url}/#/chat")
    pg.fill("[data-testid=chat-temp]", "0")
    pg.fill("[data-testid=chat-max]", "16")
    pg.fill("[data-testid=chat-input]", "What is the capital of France?")
    pg.click("[data-testid=chat-send]")
    pg.wait_for_function(
        "!document.querySelector('[data-testid=chat-send]').disabled"
        " && document.querySelector('[data-testid=chat-reply]').textContent.length > 0",
        timeout=180_000,
    )
    ids = chat_ids(lm, [{"role": "user", "content": "What is the capital of France?"}])
    params = make_params(lm.tokenizer, max_new_tokens=16, temperature=0, stop=["<|im_end|>"])
    want = complete(lm.model, lm.tokenizer, [ids], params)[0].text
    assert pg.inner_text("[data-testid=chat-reply]") == want.strip()
    shot(pg, "chat")


@pytest.mark.parametrize(
    ("name", "ready"),
    [
        ("tokenizer", "document.querySelectorAll('[data-testid=tok-pieces] .piece').length > 5"),
        ("decoding", "document.querySelectorAll('[data-testid=dec-bars] *').length > 5"),
        ("embeddings", "document.querySelectorAll('[data-testid=emb-nn] li').length > 0"),
    ],
)
def test_other_pages_render_real_results(page, server, name: str, ready: str) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/#/{name}")
    pg.wait_for_function(ready, timeout=180_000)
    assert pg.eval_on_selector_all(".error:not([hidden])", "e => e.length") == 0
    shot(pg, name)
