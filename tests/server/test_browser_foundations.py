"""The foundations pages in a real browser (Debian's chromium via Playwright): each control
changes what the page shows. Screenshots land in tests/artifacts/ like the other pages'."""

from __future__ import annotations

import json

from .browser import set_range, shot


def stat(pg, key: str) -> str:  # noqa: ANN001
    return pg.inner_text(f"[data-stat={key}]")


def pct(text: str) -> float:
    return float(text.rstrip("%"))


def settled(pg) -> str:  # noqa: ANN001
    """Wait until the path drawn is the latest request's (its lr is the slider's) and its
    animation finished; return its final point."""
    pg.wait_for_function(
        "() => { const p = document.querySelector('[data-testid=gd-path]');"
        " const lr = document.querySelector('[data-testid=gd-lr]').nextElementSibling;"
        " return p && p.dataset.done && p.dataset.lr === lr.textContent; }")
    return pg.get_attribute("[data-testid=gd-path]", "data-final")


def test_descent_learning_rate_moves_the_path_and_diverges(page, server) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/#/descent")
    first = settled(pg)
    assert pg.is_hidden("[data-testid=gd-diverged]")
    set_range(pg, "gd-lr", 400)  # lr about 0.0076: a shorter walk along the valley
    slow = settled(pg)
    assert slow != first and float(stat(pg, "loss")) > 1.0
    shot(pg, "descent")
    set_range(pg, "gd-lr", 1000)  # lr 5 on a curvature of 20: flies off
    pg.wait_for_selector("[data-testid=gd-diverged]:not([hidden])")
    assert "Diverged" in pg.inner_text("[data-testid=gd-diverged]")
    assert settled(pg) != slow
    shot(pg, "descent-diverged")
    pg.select_option("[data-testid=gd-opt]", "adam")
    pg.select_option("[data-testid=gd-surface]", "rosenbrock")
    set_range(pg, "gd-steps", 300)
    set_range(pg, "gd-lr", 650)  # lr about 0.11
    end = json.loads(settled(pg))
    assert pg.is_hidden("[data-testid=gd-diverged]") and stat(pg, "steps") == "300"
    assert float(stat(pg, "loss")) < 0.5 and end[0] > 0  # around the bend towards (1, 1)
    shot(pg, "descent-adam-rosenbrock")
    # 1-D: plain GD on (x - 3)^2 diverges exactly when lr > 1.
    pg.select_option("[data-testid=gd-opt]", "gd")
    pg.select_option("[data-testid=gd-surface]", "quadratic")
    set_range(pg, "gd-lr", 840)  # lr about 0.89: zig-zags in, |1 - 2 lr| = 0.77
    assert abs(json.loads(settled(pg))[0] - 3) < 1e-3
    assert pg.is_hidden("[data-testid=gd-diverged]")
    set_range(pg, "gd-lr", 870)  # lr about 1.22: |1 - 2 lr| = 1.45, out it goes
    settled(pg)
    assert "Diverged" in pg.inner_text("[data-testid=gd-diverged]")
    shot(pg, "descent-1d-diverged")


def test_neural_net_trains_and_paints_a_boundary(page, server) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/#/neuralnet")
    pg.wait_for_function("document.querySelector('[data-testid=nn-boundary]').dataset.step "
                         "=== '1000'", timeout=120_000)
    assert pct(stat(pg, "test_acc")) >= 95
    # The canvas holds a painted boundary: both classes' colours appear in its pixels.
    colours = pg.evaluate("""() => {
        const c = document.querySelector('[data-testid=nn-boundary]');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let blue = 0, orange = 0;
        for (let i = 0; i < d.length; i += 4) {
            if (d[i + 2] > d[i] + 40) blue++; else if (d[i] > d[i + 2] + 40) orange++;
        }
        return [blue, orange];
    }""")
    assert min(colours) > 5000, colours
    shot(pg, "neuralnet-moons")
    pg.select_option("[data-testid=nn-dataset]", "spirals")
    set_range(pg, "nn-noise", 0.05)
    set_range(pg, "nn-n", 400)
    pg.fill("[data-testid=nn-hidden]", "32, 32")
    set_range(pg, "nn-steps", 2500)
    pg.click("[data-testid=nn-train]")
    pg.wait_for_function("document.querySelector('[data-testid=nn-boundary]').dataset.step "
                         "=== '2500'", timeout=120_000)
    assert pct(stat(pg, "train_acc")) >= 95 and pct(stat(pg, "test_acc")) >= 85
    shot(pg, "neuralnet-spirals")


def test_overfit_degree_ridge_and_dropout(page, server) -> None:  # noqa: ANN001
    pg = page
    pg.goto(f"{server.url}/#/overfit")
    pg.wait_for_selector("[data-testid=of-curve]")
    val4 = float(stat(pg, "val"))
    set_range(pg, "of-degree", 20)
    pg.wait_for_function("t => document.querySelector('[data-stat=val]').textContent !== t",
                         arg=stat(pg, "val"))
    val20 = float(stat(pg, "val"))
    assert float(stat(pg, "train")) < 1e-6 and val20 > 100 * val4
    shot(pg, "overfit-degree20")
    set_range(pg, "of-lam", 600)  # lambda about 3e-2
    pg.wait_for_function("t => document.querySelector('[data-stat=val]').textContent !== t",
                         arg=stat(pg, "val"))
    assert float(stat(pg, "val")) < val20 / 100
    pg.click("[data-testid=of-dropout-go]")
    pg.wait_for_selector("[data-testid=of-dropout-result] canvas >> nth=1", timeout=120_000)
    assert pct(stat(pg, "train-0")) == 100.0
    shot(pg, "overfit-ridge-dropout")


def test_word_vectors_neighbours_analogy_projection(page, server, monkeypatch) -> None:  # noqa: ANN001
    from llmlab.foundations.word2vec import W2VConfig
    from llmlab.server import routes_vectors

    # Half the default's width, two epochs instead of five: about 10 s to train on a fresh
    # machine instead of two minutes, and still gold -> silver, king - man + woman -> queen.
    monkeypatch.setattr(routes_vectors, "W2V_CONFIG", W2VConfig(dim=50, epochs=2))
    pg = page
    pg.goto(f"{server.url}/#/word2vec")
    pg.wait_for_function("document.querySelector('[data-stat=state]')?.textContent"
                         ".startsWith('trained')", timeout=600_000)
    pg.wait_for_selector("[data-testid=w2v-analogy] li")
    pg.wait_for_selector("[data-testid=w2v-proj] circle")
    assert "silver" in pg.inner_text("[data-testid=w2v-nn]")
    kjv = pg.inner_text("[data-testid=w2v-analogy]")
    assert "queen" in kjv, kjv
    shot(pg, "word2vec-kjv")
    pg.select_option("[data-testid=w2v-space]", "smollm2")
    pg.wait_for_function("document.querySelector('[data-testid=w2v-nn]').textContent"
                         ".includes('silver') && /Ġgold/.test(document.body.textContent)")
    pg.wait_for_function("document.querySelector('[data-testid=w2v-analogy] li b')"
                         "?.textContent === 'queen'")
    pg.fill("[data-testid=w2v-a]", "xqzv")
    pg.click("[data-testid=w2v-go]")
    pg.wait_for_selector("[data-testid=w2v-error]:not([hidden])")
    assert pg.inner_text("[data-testid=w2v-error]").startswith("a:")
    shot(pg, "word2vec-smollm2")
