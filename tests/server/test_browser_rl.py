"""The RL page in a real browser (Debian's chromium driven by Playwright): a sampled group of
G completions with their rewards and advantages (TRL's formula, summing to ~0 under group
scaling), one GRPO update and PPO drawn per token, and a 2-step GRPO run started from the
page whose metric points appear. Screenshots land in tests/artifacts/ (or $LLMLAB_ARTIFACTS)."""

from __future__ import annotations

import pytest
from grpo_refs import trl_advantages

from llmlab.align.data import task_prompts
from llmlab.tasks.verifiers import score

from .browser import shot

G = 4


def cells(pg, testid: str) -> list[str]:  # noqa: ANN001
    return pg.eval_on_selector_all(f"[data-testid={testid}]", "es => es.map(e => e.textContent)")


def done_or_failed(pg, selector: str, error: str) -> None:  # noqa: ANN001
    """Wait (the box may be busy: up to 5 min) for `selector`, or for the error box."""
    pg.wait_for_function(
        "([s, e]) => document.querySelector(s) || !document.querySelector("
        "`[data-testid=${e}]`).hidden", arg=[selector, error], timeout=300_000)
    assert pg.is_hidden(f"[data-testid={error}]"), pg.inner_text(f"[data-testid={error}]")


def test_rl_page_group_update_and_ppo(page, server) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/#/rl")
    pg.fill("[data-testid=rl-n]", str(G))
    pg.fill("[data-testid=rl-max-new]", "16")
    pg.click("[data-testid=rl-sample]")
    pg.wait_for_function(
        "n => document.querySelectorAll('[data-testid=rl-completion]').length === n"
        " || !document.querySelector('[data-testid=rl-error]').hidden", arg=G, timeout=300_000)
    assert pg.is_hidden("[data-testid=rl-error]"), pg.inner_text("[data-testid=rl-error]")
    row = task_prompts("arithmetic-easy", 1)[0]
    texts = pg.eval_on_selector_all("[data-testid=rl-text]", "es => es.map(e => e.value)")
    assert len(texts) == G and pg.inner_text("[data-testid=rl-prompt]") == row["prompt"]
    # Each shown reward is the verifier's score of the shown text.
    rewards = [float(x) for x in cells(pg, "rl-reward")]
    assert rewards == [score(t, row["verifier"]) for t in texts]

    # Make the group carry signal: one right and one wrong answer typed in, then re-scored.
    answer = row["verifier"]["answer"]
    pg.locator("[data-testid=rl-text]").nth(0).fill(f"The answer is {answer:g}.")
    pg.locator("[data-testid=rl-text]").nth(1).fill(f"The answer is {answer + 1:g}.")
    pg.click("[data-testid=rl-rescore]")  # sets the busy note at once; cleared when drawn
    pg.wait_for_function("() => document.querySelector('[data-testid=rl-busy]')"
                         ".textContent === ''")
    rewards = [float(x) for x in cells(pg, "rl-reward")]
    assert rewards[:2] == [1.0, 0.0]
    assert cells(pg, "rl-verdict")[:2] == ["correct", "incorrect"]
    adv = [float(x) for x in cells(pg, "rl-adv")]
    assert adv == pytest.approx(trl_advantages(rewards, G, "group"), abs=2e-3)  # shown to 3 dp
    assert sum(adv) == pytest.approx(0.0, abs=5e-3)
    assert float(pg.inner_text("[data-stat=sum]")) == pytest.approx(0.0, abs=1e-3)
    pg.select_option("[data-testid=rl-scale]", "none")
    adv_none = [float(x) for x in cells(pg, "rl-adv")]
    assert adv_none == pytest.approx(trl_advantages(rewards, G, "none"), abs=2e-3)
    pg.select_option("[data-testid=rl-scale]", "group")
    shot(pg, "rl_group")

    # One GRPO update: every completion's tokens with a ratio; clipped ones flagged.
    pg.fill("[data-testid=rl-lr]", "0.001")
    pg.click("[data-testid=rl-step]")
    done_or_failed(pg, "[data-testid=rl-step-row]", "rl-step-error")
    assert len(pg.query_selector_all("[data-testid=rl-step-row]")) == G
    ratios = [float(x) for x in pg.eval_on_selector_all(
        "[data-testid=rl-tok]", "es => es.map(e => e.dataset.ratio)")]
    assert len(ratios) > G and any(abs(r - 1) > 1e-3 for r in ratios)
    assert "clipped tokens after" in pg.inner_text("[data-testid=rl-step-stats]")
    shot(pg, "rl_grpo_step")

    # PPO on the same completions: per-token values, advantages and KL drawn.
    pg.fill("[data-testid=ppo-epochs]", "1")
    pg.click("[data-testid=ppo-run]")
    done_or_failed(pg, "[data-testid=ppo-values] path.fline", "ppo-error")
    assert len(pg.query_selector_all("[data-testid=ppo-tok]")) > 0
    assert len(pg.query_selector_all("[data-testid=ppo-which] option")) == G
    shot(pg, "rl_ppo")


def test_rl_page_starts_a_two_step_grpo_run(page, server) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/#/rl")
    for testid, v in (("grpo-steps", 2), ("grpo-prompts", 1), ("grpo-g", 2),
                      ("grpo-eval-every", 1), ("grpo-eval-n", 8)):
        pg.fill(f"[data-testid={testid}]", str(v))
    pg.click("[data-testid=grpo-start]")
    pg.wait_for_function(
        "() => ['finished', 'failed'].includes(document.querySelector("
        "'[data-testid=grpo-status]').dataset.status)", timeout=600_000)
    assert pg.get_attribute("[data-testid=grpo-status]", "data-status") == "finished", \
        pg.inner_text("[data-testid=grpo-error]")
    # Metric points: reward at steps 1-2, held-out accuracy at steps 0-2.
    pg.wait_for_function("() => document.querySelector('[data-testid=grpo-verdict]')"
                         ".textContent.includes('at step 2')")
    d = pg.get_attribute("[data-testid=grpo-heldout] path.fline.rl-c", "d")
    assert d and d.count("L") == 2  # three points: one move, two line segments
    d = pg.get_attribute("[data-testid=grpo-reward] path.fline.rl-a", "d")
    assert d and d.count("L") == 1
    verdict = pg.inner_text("[data-testid=grpo-verdict]")
    assert "held-out accuracy" in verdict and "on 8 problems" in verdict
    shot(pg, "rl_live")
