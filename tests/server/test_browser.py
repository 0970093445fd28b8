"""The playground in a real browser (Debian's chromium driven by Playwright).

Screenshots of every page land in tests/artifacts/ (git-ignored; or $LLMLAB_ARTIFACTS) for
a human to look at."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from llmlab.peft import accounting as acc

from .browser import set_range, shot


def cells(pg) -> list[str]:  # noqa: ANN001
    return pg.eval_on_selector_all("[data-testid=heatmap] rect.c", "rs => rs.map(r => r.dataset.w)")


def wait_change(pg, before: list[str]) -> list[str]:  # noqa: ANN001
    pg.wait_for_function(
        "b => JSON.stringify([...document.querySelectorAll('[data-testid=heatmap] rect.c')]"
        ".map(r => r.dataset.w)) !== b",
        arg=json.dumps(before, separators=(",", ":")),
    )
    return cells(pg)


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


def peft_lora_q_v_r8(shape: acc.LlamaShape) -> int:
    """PEFT's own trainable count for LoRA r=8 on q_proj, v_proj (a meta-device Llama)."""
    import peft

    from .test_peft_accounting import _meta_llama

    cfg = peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"])
    pm = peft.get_peft_model(_meta_llama(shape), cfg)
    return int(pm.get_nb_trainable_parameters()[0])


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
    # Back to r=8 on q_proj, v_proj: each base's count is what PEFT itself prints for it.
    set_range(pg, "lora-r", 8)
    for base, shape in [("llama-2-13b", acc.LLAMA_2_13B), ("llama-3.1-8b", acc.LLAMA_31_8B)]:
        pg.select_option("[data-testid=lora-base]", base)
        want = f"{peft_lora_q_v_r8(shape):,}"
        pg.wait_for_function("w => document.querySelector('[data-stat=model]').textContent === w",
                             arg=want)


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


def test_rag_upload_joins_a_session_kb(page, server) -> None:  # noqa: ANN001
    """An uploaded document (hostile file name included) is searchable in this session."""
    from llmlab.server.rag_routes import default_kb, safe_name

    pg = page
    pg.goto(f"{server.url}/#/rag")
    name = "../<img src=x onerror=window.__xss=1>zorblax.txt"
    fact = ("The zorblax protocol was invented by Captain Wexford in 2031 to synchronise "
            "lunar greenhouse pumps. Each zorblax frame carries a 12-bit pump identifier.")
    pg.set_input_files("[data-testid=rag-upload]",
                       {"name": name, "mimeType": "text/plain", "buffer": fact.encode()})
    pg.wait_for_function("document.querySelector('[data-testid=rag-note]').textContent"
                         ".includes('uploaded doc')")
    pg.fill("[data-testid=rag-query]", "Who invented the zorblax protocol?")
    pg.click("[data-testid=rag-go]")
    pg.wait_for_selector("[data-testid=rag-hits] li", timeout=300_000)
    first = pg.inner_text("[data-testid=rag-hits] li .hitmeta")
    assert first.startswith(f"[1] {safe_name(name)} ") and "/" not in safe_name(name)
    stats = pg.inner_text("[data-testid=rag-stats]").replace("\t", "\n")
    assert f"docs in KB\n{len(default_kb()) + 1}" in stats
    assert pg.evaluate("window.__xss") is None
    shot(pg, "rag-upload")


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
        # The map is the checkpoint's own attention, as the library computes it.
        ref = run_attention(llmlab.load(local_run), text, None)
        w = softmax_with_temperature(ref.scores[0], 1.0)[0]
        n = w.shape[0]
        # On a slow box the model switch can render the default sentence first: wait for ours.
        pg.wait_for_function("n => document.querySelectorAll('.tok').length === n", arg=n)
        stats = pg.inner_text("[data-testid=stats]").replace("\t", "\n")
        assert "layers\n2" in stats and "heads\n2" in stats
        got = [float(x) for x in cells(pg)]
        want = [float(w[i, j]) for i in range(n) for j in range(n)]
        assert got == pytest.approx(want, abs=1e-3)
        shot(pg, "attention-local")

        # The tokenizer page offers the same checkpoint's trained tokenizer (512 ids).
        pg.goto(f"{s.url}/#/tokenizer")
        pg.wait_for_selector("[data-testid=tok-which] option[value='local:tinyrun']",
                             state="attached")
        pg.fill("[data-testid=tok-text]", text)
        pg.select_option("[data-testid=tok-which]", "local:tinyrun")
        want_ids = llmlab.load(local_run).tokenizer.encode(text)
        assert want_ids != lm.tokenizer.encode(text)  # so the check below tells them apart
        pg.wait_for_function(
            "ids => JSON.stringify([...document.querySelectorAll('[data-testid=tok-pieces] sub')]"
            ".map(e => Number(e.textContent))) === ids",
            arg=str(want_ids).replace(" ", ""),
        )
        assert "vocabulary\n512" in pg.inner_text("[data-testid=tok-stats]").replace("\t", "\n")
        shot(pg, "tokenizer-local")


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
    params = make_params(lm.tokenizer, max_new_tokens=16, temperature=0, stop=["<|im_end|>"],
                         logprobs=5)
    got = complete(lm.model, lm.tokenizer, [ids], params)[0]
    assert pg.inner_text("[data-testid=chat-reply]") == got.text.strip()
    # Token probabilities (on by default): one shaded span per token, the library's logprob
    # and its top alternatives in the hover box. The server decodes with the int8 model, the
    # library here with fp32: the shown p agrees to about a percent.
    spans = pg.locator("[data-testid=chat-tok]")
    assert spans.count() == len(got.token_ids)
    assert "".join(spans.all_inner_texts()) == got.text
    spans.nth(0).hover()
    tip = pg.inner_text("[data-testid=chat-tip]")
    first = got.logprobs[0]
    p = float(tip.split("p = ")[1].split("%")[0]) / 100
    assert p == pytest.approx(math.exp(first.logprob), abs=0.02)
    alts = [ln for ln in tip.splitlines() if ln[:2] in {f"{k}." for k in range(1, 6)}]
    assert len(alts) == 5 and alts[0].endswith("✓")  # greedy: the top choice was taken
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
