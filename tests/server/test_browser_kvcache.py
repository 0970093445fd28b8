"""The KV-cache page in a real browser: the prefill/decode drawing has one row per new token
(the prefill computing every prompt position, each decode step one) and replays step by
step, the memory plot has its three series, and a measured time per token shows."""

from __future__ import annotations

from .browser import shot


def test_kvcache_page_draws_steps_memory_and_a_measured_time(page, server, lm) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/#/kvcache")
    pg.wait_for_function("document.querySelectorAll('[data-testid=kv-steps] g').length === 8")
    n_prompt = len(lm.tokenizer.encode(pg.input_value("[data-testid=kv-text]")))
    rows = pg.eval_on_selector_all("[data-testid=kv-steps] g", """gs => gs.map(g =>
        [...g.querySelectorAll('rect')].map(r => r.getAttribute('class')))""")
    assert rows[0].count("kv-computed") == n_prompt and "kv-reused" not in rows[0]
    for i, row in enumerate(rows[1:], start=1):  # decode step i: one new row, the rest reused
        assert row.count("kv-computed") == 1 and row.count("kv-reused") == n_prompt + i - 1
    pg.click("[data-testid=kv-play]")  # the replay starts at the prefill, then one row a step
    note = pg.inner_text("[data-testid=kv-step-note]")
    assert note.startswith(f"Prefill: computes K/V for {n_prompt} positions, reuses 0")
    pg.wait_for_function("document.querySelector('[data-testid=kv-step-note]').textContent"
                         ".startsWith('Decode step 1: computes K/V for 1 position')")
    legend = pg.eval_on_selector_all("[data-testid=kv-memory] text.legend",
                                     "ts => ts.map(t => t.textContent)")
    assert [t.split(" ")[0] for t in legend] == ["smollm2-135m-instruct", "Llama-3.1-8B",
                                                 "Llama-3.1-8B"]
    pg.wait_for_selector("[data-testid=kv-cached-ms]", timeout=120_000)
    cached = float(pg.inner_text("[data-testid=kv-cached-ms]"))
    recompute = float(pg.inner_text("[data-testid=kv-recompute-ms]"))
    assert cached > 0 and recompute > 0
    assert pg.inner_text("[data-testid=kv-speedup]").endswith("×")
    shot(pg, "kvcache")
