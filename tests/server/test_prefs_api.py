"""The preferences page's API against outside references: a reward run's scores and
σ(r_c − r_r) as transformers' LlamaForSequenceClassification + PEFT computes them on the
exported model; the pairing modes' pairs as make_prefs itself forms them from the same
samples."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from reward_ref import HFReward, make_prefs_file, make_tiny

from .lab_helpers import wait_run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:  # noqa: ANN001
    return make_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def rm_run(server: Any, tiny: Path, tmp_path_factory) -> dict[str, Any]:  # noqa: ANN001
    """A reward run started through the lab's API on the tiny model (the server allows local
    paths in tests): 4 steps, evaluated every 2 on 8 held-out pairs."""
    prefs = make_prefs_file(tmp_path_factory.mktemp("prefs") / "prefs.jsonl")
    r = httpx.post(f"{server.url}/api/runs", json={"kind": "reward", "options": {
        "model": str(tiny), "data": str(prefs), "max_steps": 4, "lr": 1e-2, "batch_size": 4,
        "val_examples": 8, "eval_every": 2}}, timeout=60)
    assert r.status_code == 201, r.text
    return wait_run(server.url, r.json()["id"])


def test_scores_equal_transformers_sequence_classifier(server: Any, tiny: Path,
                                                       rm_run: dict, tmp_path: Path) -> None:
    import llmlab
    from llmlab.align.data import completion_ids, prompt_ids
    from llmlab.generate.chat import template_for

    info = httpx.get(f"{server.url}/api/prefs/info", timeout=30).json()
    assert rm_run["model"] in [m["id"] for m in info["reward_models"]]
    assert info["pairings"] == ["extremes", "length-matched", "perturbed"]
    body = {"model": rm_run["model"], "prompt": "Is 3 + 4 = 7?", "chosen": "yes",
            "rejected": "no, it is 8"}
    r = httpx.post(f"{server.url}/api/prefs/score", json=body, timeout=120)
    assert r.status_code == 200, r.text
    got = r.json()
    # What was scored: the prompt in the model's chat template, then the answer and its
    # end-of-turn token, as the training batches hold them.
    lm = llmlab.load(str(tiny))
    tpl = template_for(lm)
    for side in ("chosen", "rejected"):
        assert got[f"{side}_ids"] == (prompt_ids(lm.tokenizer, tpl, body["prompt"])
                                      + completion_ids(lm.tokenizer, tpl, body[side]))
    ref = HFReward(tiny, Path(server.hub.runs().run_dir(rm_run["id"])) / "final", tmp_path)
    rc = float(ref(torch.tensor([got["chosen_ids"]])))
    rr = float(ref(torch.tensor([got["rejected_ids"]])))
    assert got["r_chosen"] == pytest.approx(rc, abs=1e-4)
    assert got["r_rejected"] == pytest.approx(rr, abs=1e-4)
    assert got["p_chosen"] == pytest.approx(1 / (1 + math.exp(-(rc - rr))), abs=1e-4)
    assert got["loss"] == pytest.approx(-math.log(1 / (1 + math.exp(-(rc - rr)))), abs=1e-4)
    assert "prefs.score" in got["sources"]


def test_reward_run_logs_held_out_metrics_over_steps(server: Any, rm_run: dict) -> None:
    root = Path(server.hub.runs().run_dir(rm_run["id"]))
    rows = [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]
    held = [r for r in rows if "val/pairwise_accuracy" in r]
    assert [r["step"] for r in held] == [2, 4]
    ev = json.loads((root / "eval.json").read_text())
    assert held[-1]["val/pairwise_accuracy"] == ev["pairwise_accuracy"]
    assert held[-1]["val/length_baseline"] == ev["length_baseline"] == 0.5  # one token each


def test_score_errors_name_the_field(server: Any, rm_run: dict) -> None:
    pair = {"prompt": "p", "chosen": "a", "rejected": "b"}
    r = httpx.post(f"{server.url}/api/prefs/score", json={"model": "run:nope", **pair},
                   timeout=30)
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    r = httpx.post(f"{server.url}/api/prefs/score", json={"model": "smollm2", **pair},
                   timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = httpx.post(f"{server.url}/api/prefs/sample", json={"task": "nope"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "task"


def test_pairing_modes_equal_make_prefs(server: Any, lm: Any) -> None:
    """Each mode's pair on the page is the pair make_prefs forms with the same settings (its
    own sampling, seeded alike), and the indices and length differences shown are those of
    the samples listed."""
    from llmlab.align.data import PAIRINGS, PREF_TOKENS, make_prefs
    from llmlab.align.prefs_view import task_prompt
    from llmlab.tasks.verifiers import score_many

    body = {"task": "arithmetic-easy-prefs", "index": 2, "samples": 4, "temperature": 0.7,
            "seed": 0, "hint": True}
    r = httpx.post(f"{server.url}/api/prefs/sample", json=body, timeout=300)
    assert r.status_code == 200, r.text
    got = r.json()
    prompt = task_prompt(body["task"], body["index"])
    assert got["prompt"] == prompt["prompt"]
    texts = [s["text"] for s in got["samples"]]
    assert [s["reward"] for s in got["samples"]] == score_many(texts, [prompt["verifier"]] * 4)
    assert [s["hinted"] for s in got["samples"]] == [False, False, True, True]
    assert got["pairings"]["extremes"]["pair"] is not None  # hinted samples: one is right
    for mode in PAIRINGS:
        want = make_prefs(lm, [prompt], 4, PREF_TOKENS[body["task"]], 0.7, 0, True,
                          pairing=mode)
        m = got["pairings"][mode]
        assert ([m["pair"]] if m["pair"] else []) == want, mode
        if not want:
            continue
        assert texts[m["chosen"]] == want[0]["chosen"]
        if m["rejected"] is not None:
            assert texts[m["rejected"]] == want[0]["rejected"]
        assert m["length_diff"] == len(want[0]["chosen"]) - len(want[0]["rejected"])
    lm_mode = got["pairings"]["length-matched"]
    assert abs(lm_mode["length_diff"]) == min(abs(c["length_diff"])
                                              for c in lm_mode["candidates"])
