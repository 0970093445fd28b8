"""The SFT masking page in a real browser: the tokens it marks trained are transformers'
assistant-token mask for the conversation on the page, editing re-renders, and the packing
panel restarts positions at each example. Screenshots land in tests/artifacts/."""

from __future__ import annotations

from sft_mask_refs import hf_assistant_mask

from .browser import shot


def on_page(pg) -> list[dict[str, str]]:  # noqa: ANN001
    """The conversation as the page holds it: the system field first (if any), then the turns."""
    msgs = pg.eval_on_selector_all(
        "[data-testid=sft-turn]",
        "rows => rows.map(r => ({role: r.querySelector('select').value,"
        " content: r.querySelector('textarea').value}))")
    system = pg.input_value("[data-testid=sft-system]")
    return ([{"role": "system", "content": system}] if system.strip() else []) + msgs


def marked(pg) -> tuple[int, set[int]]:  # noqa: ANN001
    """(number of tokens drawn, indices the page marks trained)."""
    toks = pg.eval_on_selector_all("[data-testid=sft-tok]",
                                   "ts => ts.map(t => [+t.dataset.i, t.dataset.trained])")
    return len(toks), {i for i, t in toks if t == "1"}


def rendered(pg, after: str | None = None) -> str:  # noqa: ANN001
    """Wait for a render newer than `after`; return its revision."""
    pg.wait_for_function(
        "(old) => { const v = document.querySelector('[data-testid=sft-tokens]');"
        " return v && v.dataset.rev && v.dataset.rev !== old; }", arg=after or "")
    return pg.get_attribute("[data-testid=sft-tokens]", "data-rev")


def check_against_transformers(pg) -> list[int]:  # noqa: ANN001
    ids, mask = hf_assistant_mask(on_page(pg))
    n, trained = marked(pg)
    assert n == len(ids)
    assert trained == {i for i, m in enumerate(mask) if m}
    assert pg.get_attribute("[data-testid=sft-counts]", "data-trained") == str(sum(mask))
    assert f"{sum(mask)} of {len(ids)}" in pg.inner_text("[data-testid=sft-counts]")
    return mask


def test_trained_tokens_are_transformers_assistant_mask_and_edits_rerender(page, server) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/#/sftmask")
    rev = rendered(pg)
    before = check_against_transformers(pg)
    assert pg.is_hidden("[data-testid=sft-error]")
    # Packing: each example starts at position 0, the mask is drawn with labelled axes.
    cells = pg.eval_on_selector_all(
        "[data-testid=sft-cell]",
        "cs => cs.map(c => [c.dataset.row, +c.dataset.pos, +c.dataset.doc, c.dataset.start])")
    starts = [c for c in cells if c[3] == "1" and c[2] >= 0]
    assert len(starts) == 5 and all(c[1] == 0 for c in starts)  # yours + 4 trivia
    assert all(c[1] > 0 for c in cells if c[3] == "0" and c[2] >= 0)
    svg = pg.text_content("[data-testid=sft-mask]") or ""
    assert "query position" in svg and "key position" in svg
    shot(pg, "sftmask")

    # Edit the last assistant reply: a longer answer, more trained tokens, re-rendered.
    pg.locator("[data-testid=sft-content]").nth(3).fill(
        "Rome. It became Italy's capital in 1871, after Turin and Florence.")
    rev = rendered(pg, rev)
    after = check_against_transformers(pg)
    assert sum(after) > sum(before)

    # Add a turn pair through the page's controls, then drop the system prompt.
    pg.click("[data-testid=sft-add]")
    pg.locator("[data-testid=sft-content]").nth(4).fill("Thanks!")
    rev = rendered(pg, rev)
    pg.click("[data-testid=sft-add]")
    pg.locator("[data-testid=sft-content]").nth(5).fill("You're welcome.")
    rev = rendered(pg, rev)
    pg.fill("[data-testid=sft-system]", "")
    rendered(pg, rev)
    roles = [m["role"] for m in on_page(pg)]
    assert roles == ["user", "assistant"] * 3
    check_against_transformers(pg)
    shot(pg, "sftmask-edited")


def test_no_assistant_turn_shows_the_error(page, server) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/#/sftmask")
    rendered(pg)
    for role in pg.locator("[data-testid=sft-role]").all():
        role.select_option("user")
    pg.wait_for_selector("[data-testid=sft-error]:not([hidden])")
    assert "no assistant turn" in pg.inner_text("[data-testid=sft-error]")
