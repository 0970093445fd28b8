"""Inside the model in a real browser: the logit lens names " Paris" at the last layer for
"The capital of France is", and a head picked on the role map opens on the Self-attention
page with its layer, head and role."""

from __future__ import annotations

import re

from .browser import shot

LENS_CELLS = "[data-testid=lens-grid] td[data-piece]"


def test_logit_lens_grid_shows_paris_at_the_last_layer(page, server) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/#/inside")
    pg.fill("[data-testid=lens-text]", "The capital of France is")
    pg.wait_for_selector(LENS_CELLS)
    cells = pg.eval_on_selector_all(
        LENS_CELLS, "ts => ts.map(t => [t.dataset.testid, t.dataset.piece, +t.dataset.p])")
    pos = {tuple(int(v) for v in tid.split("-")[1:]): (piece, p) for tid, piece, p in cells}
    last_layer = max(layer for layer, _ in pos)
    last_pos = max(t for _, t in pos)
    assert (last_layer, last_pos + 1) == (30, 5)  # embeddings + 30 layers; 5 tokens
    piece, p = pos[(last_layer, last_pos)]
    assert piece == " Paris" and 0.5 < p <= 1
    # It is a lens, not a copy of the output: the embedding row predicts something else.
    assert pos[(0, last_pos)][0] != " Paris"
    shot(pg, "inside-lens")


def test_head_role_map_opens_the_head_on_the_attention_page(page, server) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/#/inside")
    pg.select_option("[data-testid=role]", "induction")
    link = pg.wait_for_selector("[data-testid=role-top]")
    layer, head = map(int, re.findall(r"\d+", link.inner_text()))
    shot(pg, "inside-roles")
    pg.click(f"[data-testid=role-map] rect.c[data-i='{layer}'][data-j='{head}']")
    pg.wait_for_selector("[data-testid=att-role]:not([hidden])")
    assert pg.evaluate("location.hash").startswith("#/attention?")
    assert "induction head" in pg.inner_text("[data-testid=att-role]")
    assert pg.input_value("[data-testid=att-layer]") == str(layer)
    assert pg.input_value("[data-testid=att-head]") == str(head)
    pg.wait_for_selector("[data-testid=heatmap]")
    pg.wait_for_function("document.querySelectorAll('.tok').length > 10")  # the repeated text
    shot(pg, "inside-to-attention")
