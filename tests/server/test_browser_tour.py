"""The guided tour and the prompt A/B view in a real browser (Debian's chromium via Playwright).

The tour is checked against its own data (GET /api/tour, the one data file) and the narration
API: each step lands on its page, fills its inputs, outlines the element it names and shows
the words the narration serves; leaving and coming back returns to the same step."""

from __future__ import annotations

import httpx

from .browser import shot

BOX = "[data-testid=tour-box]"


def steps(server) -> list[dict]:  # noqa: ANN001
    return httpx.get(f"{server.url}/api/tour", timeout=30).json()["steps"]


def on_step(pg, step: dict) -> None:  # noqa: ANN001
    """Wait until `step` is shown and outlined; check the element, page and transcript."""
    pg.wait_for_selector(f"{BOX}[data-step={step['id']}]")
    hl = pg.wait_for_selector(f"[data-tour-hl={step['id']}]")
    assert hl.evaluate("(e, sel) => e.matches(sel) && e.isConnected", step["target"])
    assert pg.evaluate("location.hash") == step["route"]
    assert pg.eval_on_selector_all(".tour-hl", "es => es.length") == 1


def press(pg, step: dict, button: str) -> None:  # noqa: ANN001
    """Press one of `step`'s caption buttons, once. (A Playwright mouse click can be retried
    after it landed, while the page scrolls to the new element; the retry then presses the
    next caption's button in the same place and skips a step.)"""
    pg.eval_on_selector(f"{BOX}[data-step={step['id']}] [data-testid=tour-{button}]",
                        "b => b.click()")


def test_tour_walks_the_course_pages_outlining_each_element(page, server) -> None:  # noqa: ANN001
    pg, all_steps = page, steps(server)
    ids = [s["id"] for s in all_steps]
    assert ids.index("tokens") < ids.index("attention") < ids.index("nexttoken") < ids.index("rag")
    pg.goto(f"{server.url}/")
    pg.evaluate("localStorage.clear()")
    pg.goto(f"{server.url}/?tour=1#/tour")  # a teacher's link, by step number
    pages = []
    for i, step in enumerate(all_steps[:7]):  # tokens .. next token: five pages
        on_step(pg, step)
        said = httpx.get(f"{server.url}/api/narration/{step['narration']}", timeout=30).json()
        assert pg.inner_text("[data-testid=tour-text]") == said["text"] == step["text"]
        for sel, value in step["fill"].items():
            assert pg.input_value(sel) == value
        if step["id"] == "attention":  # the step picks its head through the page's own query
            assert (pg.input_value("[data-testid=att-layer]"),
                    pg.input_value("[data-testid=att-head]")) == ("5", "1")
        pages.append(step["route"].split("?")[0])
        if i in (0, 4):
            shot(pg, f"tour-{step['id']}")
        press(pg, step, "next")
    assert len(set(pages)) >= 5, pages
    on_step(pg, all_steps[7])
    assert pg.is_disabled("[data-testid=tour-back]") is False
    press(pg, all_steps[7], "back")
    on_step(pg, all_steps[6])


def test_leaving_and_resuming_returns_to_the_same_step(page, server) -> None:  # noqa: ANN001
    pg, all_steps = page, steps(server)
    by_id = {s["id"]: s for s in all_steps}
    pg.goto(f"{server.url}/")
    pg.evaluate("localStorage.clear()")
    pg.goto(f"{server.url}/?tour=attention#/tour")  # a link by step id
    on_step(pg, by_id["attention"])
    press(pg, by_id["attention"], "next")
    on_step(pg, by_id["positions"])
    press(pg, by_id["positions"], "leave")
    pg.wait_for_selector(BOX, state="detached")
    assert pg.eval_on_selector_all(".tour-hl", "es => es.length") == 0
    # Elsewhere, after a reload: the tour offers to resume where it was left.
    pg.goto(f"{server.url}/#/tokenizer")
    pg.reload()
    resume = pg.wait_for_selector("[data-testid=tour-resume]")
    assert "step 4" in resume.inner_text()
    assert pg.query_selector(BOX) is None
    resume.click()
    on_step(pg, by_id["positions"])
    shot(pg, "tour-resumed")
    # The nav link resumes too.
    press(pg, by_id["positions"], "leave")
    pg.click("[data-testid=tour-link]")
    on_step(pg, by_id["positions"])
    press(pg, by_id["positions"], "leave")


def test_prompt_ab_shows_both_prompts_and_what_moved(page, server) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/#/inside")
    for k, text in (("a", "The capital of France is"), ("b", "The capital of Italy is")):
        side = pg.wait_for_selector(f"[data-testid=ab-side-{k}]")
        assert text in side.inner_text()
        assert pg.eval_on_selector_all(f"[data-testid=ab-att-{k}] rect.c", "rs => rs.length") == 25
    summary = pg.inner_text("[data-testid=ab-summary]")
    assert '" Paris"' in summary  # the biggest move: Paris loses its probability
    assert pg.eval_on_selector_all("[data-testid=ab-lens] tr[data-differs]", "r => r.length") > 0
    pg.eval_on_selector("[data-testid=ab-section]", "e => e.scrollIntoView()")
    shot(pg, "inside-ab")
    # B made equal to A: no difference anywhere.
    pg.fill("[data-testid=ab-b]", "The capital of France is")
    pg.wait_for_function("document.querySelector('[data-testid=ab-summary]')"
                         ".textContent.includes('distributions: 0.000')")
    assert pg.eval_on_selector_all("[data-testid=ab-lens] tr[data-differs]", "r => r.length") == 0
