"""The training lab's pages in a real browser (Debian's chromium driven by Playwright).
Screenshots land in tests/artifacts/ (or $LLMLAB_ARTIFACTS)."""

from __future__ import annotations

import json

import httpx
import pytest

from .browser import shot

TEXT = "And God said, Let there be light: and there was light."


def stats(pg, i: int) -> dict[str, str]:  # noqa: ANN001
    return pg.eval_on_selector_all(
        f"[data-testid=nt-stats-{i}] [data-stat]",
        "es => Object.fromEntries(es.map(e => [e.dataset.stat, e.textContent]))")


def type_and_wait(pg, text: str, n: int) -> None:  # noqa: ANN001
    pg.fill("[data-testid=nt-text]", text)
    pg.wait_for_function(
        "n => document.querySelectorAll('[data-testid=nt-tokens-0] .nt-tok').length === n", arg=n)


def test_next_token_page_colours_hovers_and_compares(page, local_run, lm, enc) -> None:  # noqa: ANN001
    import llmlab
    from llmlab.explain.next_token import score_text
    from llmlab.server.hub import ServerConfig

    from .conftest import live_server

    ids = lm.tokenizer.encode(TEXT)
    with live_server(ServerConfig(fast_decode=False, model_dirs=[str(local_run)]), lm, enc) as s:
        api = httpx.post(f"{s.url}/api/next_token", json={"text": TEXT, "models": ["smollm2"]},
                         timeout=300).json()["rows"][0]  # equal to transformers': the API test
        pg = page
        pg.goto(f"{s.url}/#/nexttoken")
        type_and_wait(pg, TEXT, len(ids))
        spans = "[data-testid=nt-tokens-0] .nt-tok"
        assert pg.eval_on_selector_all(spans, "es => es.map(e => e.textContent).join('')") == TEXT
        # Coloured by surprisal: each scored token's colour follows its NLL, so tokens the
        # model found likelier and less likely differ.
        nll = [float(x) for x in
               pg.eval_on_selector_all(spans, "es => es.slice(1).map(e => e.dataset.nll)")]
        assert nll == pytest.approx([t["nll"] for t in api["tokens"][1:]], abs=1e-9)
        colours = pg.eval_on_selector_all(
            spans, "es => es.map(e => getComputedStyle(e).backgroundColor)")
        lo, hi = nll.index(min(nll)) + 1, nll.index(max(nll)) + 1
        assert colours[lo] != colours[hi] and len(set(colours[1:])) > 3
        assert "surprisal −log p (nats)" in pg.inner_text(".nt-legend")

        # Hover: the model's top-5 guesses at that position, with the actual token's p.
        j = hi
        pg.hover(f"{spans}[data-i='{j}']")
        pg.wait_for_selector("[data-testid=nt-tip]", state="visible")
        guesses = pg.eval_on_selector_all("[data-testid=nt-tip] .nt-guess .nt-gp",
                                          "es => es.map(e => e.textContent)")
        want = api["tokens"][j]["top"]
        assert len(want) == 5
        assert guesses == [json.dumps(g["piece"], ensure_ascii=False) for g in want]
        head = pg.inner_text("[data-testid=nt-tip] .nt-tip-head")
        assert f"{100 * api['tokens'][j]['p']:.3g}%" in head

        # The page's stats are the API's numbers.
        st = stats(pg, 0)
        assert float(st["ce"]) == pytest.approx(api["mean_nll"], abs=1e-4)
        assert st["ce"] == f"{api['mean_nll']:.4f}"
        assert st["ppl"] == f"{api['perplexity']:.3f}"
        assert st["bpb"] == f"{api['bits_per_byte']:.4f}"
        assert st["tokens"] == f"{len(ids)} ({len(ids) - 1})"
        shot(pg, "nexttoken")

        # Compare with the local checkpoint: a second row on the same text, its own tokenizer.
        opt = "[data-testid=nt-compare] option[value='local:tinyrun']"
        pg.wait_for_selector(opt, state="attached")
        menu = pg.eval_on_selector_all("[data-testid=nt-model] option",
                                       "es => es.map(e => e.value)")
        assert "local:tinyrun" in menu and "minilm" not in menu  # an encoder predicts no token
        pg.select_option("[data-testid=nt-compare]", "local:tinyrun")
        pg.wait_for_selector("[data-testid=nt-row-1]")
        assert "tinyrun" in pg.inner_text("[data-testid=nt-name-1]")
        ref = score_text(llmlab.load(local_run), TEXT)
        assert pg.eval_on_selector_all("[data-testid=nt-tokens-1] .nt-tok",
                                       "es => es.length") == ref.n_tokens
        assert stats(pg, 1)["ce"] == f"{ref.mean_nll:.4f}"
        assert stats(pg, 0)["ce"] == f"{api['mean_nll']:.4f}"
        # The loss plot: one labelled line per model.
        labels = pg.eval_on_selector_all("[data-testid=nt-chart] text.flabel",
                                         "es => es.map(e => e.textContent)")
        assert labels == [lm.name, "tinyrun"]
        shot(pg, "nexttoken-compare")
