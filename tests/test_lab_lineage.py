"""The pipeline's lineage (llmlab.lab.lineage): which run each run was started from.

The shell-run chain is real: `llmlab pretrain` (2 steps, a tiny model on SmolLM2's tokenizer),
then `llmlab sft --model <that run>` (1 LoRA step), then `llmlab dpo --model <pretrain run>
--adapter <sft run>/final` (1 step), all written by the CLI into one runs root; the parents
must be what we passed on the command line. The playground runs (lab.json with `run:` names in
their options) are RunRecords written by hand with llmlab.lab.runs.RunRecord, as the run
manager writes them: only the lineage logic is under test, not their training (the API and
browser tests start real ones)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest
from train_common import cli

from llmlab.lab import lineage
from llmlab.lab.runs import RunManager, RunRecord

QUICK = ["--threads", "1", "--no-progress", "--no-tensorboard", "--warmup-steps", "1",
         "--eval-every", "0", "--ckpt-every", "0", "--sample-tokens", "0"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("lineage")
    root = d / "runs"
    pre, sft, dpo = root / "pretrain-a", root / "sft-shell", root / "dpo-shell"
    cli("pretrain", "--preset", "micro", "--out", str(pre), "--max-steps", "2",
        "--tokenizer", "smollm2", "--d-model", "32", "--n-layer", "2", "--n-head", "2",
        "--seq-len", "32", "--max-seq-len", "256", "--batch-size", "4", "--eval-batches", "1",
        "--log-every", "1", *QUICK)
    cli("sft", "--model", str(pre), "--data", "trivia", "--peft", "lora", "--lora-r", "2",
        "--max-steps", "1", "--batch-size", "2", "--seq-len", "256", "--max-examples", "8",
        "--val-examples", "2", "--out", str(sft), *QUICK)
    prefs = d / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({"prompt": f"What is {a} plus 1?", "chosen": str(a + 1),
                                         "rejected": str(a + 2)}) + "\n" for a in range(8)))
    cli("dpo", "--model", str(pre), "--adapter", str(sft / "final"), "--data", str(prefs),
        "--max-steps", "1", "--batch-size", "2", "--val-examples", "2", "--out", str(dpo),
        *QUICK)
    now = time.time()
    # Playground runs as the manager records them (hand-written: see the module docstring).
    records = [
        RunRecord("reward-b", "reward", {"model": "smollm2-135m-instruct", "task":
                  "arithmetic-prefs"}, ["reward"], now + 1, status="finished"),
        RunRecord("ppo-c", "ppo", {"model": "run:pretrain-a", "adapter": "run:sft-shell",
                  "reward_model": "run:reward-b"}, ["ppo"], now + 2, status="failed",
                  error="boom"),
        RunRecord("grpo-d", "grpo", {"model": "run:pretrain-a", "adapter": "run:dpo-shell",
                  "task": "arithmetic-easy"}, ["grpo"], now + 3, label="my grpo",
                  status="stopped"),
    ]
    for rec in records:
        (root / rec.id).mkdir()
        (root / rec.id / "lab.json").write_text(json.dumps(dataclasses.asdict(rec)))
    (root / "reward-b" / "final").mkdir()  # it holds a model
    return root


@pytest.fixture(scope="module")
def view(root: Path) -> dict:
    return lineage.pipeline(RunManager(root).list(), root)


def _runs(view: dict) -> dict[str, dict]:
    return {r["id"]: r for s in view["stages"] for r in s["runs"]}


def _parents(run: dict) -> dict[str, str | None]:
    return {p["role"]: p["run"] for p in run["parents"]}


def test_shell_runs_parents_are_the_paths_given_to_the_cli(view: dict) -> None:
    runs = _runs(view)
    assert runs["pretrain-a"]["parents"] == []  # pretraining starts from scratch
    assert _parents(runs["sft-shell"]) == {"model": "pretrain-a"}
    assert _parents(runs["dpo-shell"]) == {"model": "pretrain-a", "adapter": "sft-shell"}
    assert runs["dpo-shell"]["parents"][1]["name"] == "run:sft-shell"


def test_playground_runs_parents_are_their_unresolved_names(view: dict) -> None:
    runs = _runs(view)
    assert _parents(runs["ppo-c"]) == {"model": "pretrain-a", "adapter": "sft-shell",
                                       "reward_model": "reward-b"}
    assert _parents(runs["grpo-d"]) == {"model": "pretrain-a", "adapter": "dpo-shell"}
    # A bundled model is named, not a run.
    assert runs["reward-b"]["parents"] == [{"role": "model", "run": None,
                                            "name": "smollm2-135m-instruct"}]


def test_stages_edges_state_and_next(view: dict) -> None:
    stages = {s["id"]: s for s in view["stages"]}
    assert [s["id"] for s in view["stages"] if s["main"]] == [
        "pretrain", "sft", "reward", "policy", "eval"]
    assert {r["id"] for r in stages["policy"]["runs"]} == {"dpo-shell", "ppo-c", "grpo-d"}
    assert [r["id"] for r in stages["sft"]["runs"]] == ["sft-shell"]
    assert {(e["from"], e["to"], e["role"]) for e in view["edges"]} == {
        ("pretrain-a", "sft-shell", "model"), ("pretrain-a", "dpo-shell", "model"),
        ("sft-shell", "dpo-shell", "adapter"), ("pretrain-a", "ppo-c", "model"),
        ("sft-shell", "ppo-c", "adapter"), ("reward-b", "ppo-c", "reward_model"),
        ("pretrain-a", "grpo-d", "model"), ("dpo-shell", "grpo-d", "adapter")}
    assert {s: stages[s]["state"] for s in ("pretrain", "sft", "reward", "policy", "eval")} \
        == {"pretrain": "done", "sft": "done", "reward": "done", "policy": "done", "eval": ""}
    assert view["next"] == "eval" and view["current"] == "policy"  # grpo-d is the newest
    assert {p["id"] for p in stages["sft"]["pages"]} == {"sftmask", "lora"}
    assert all(s["pages"] for s in view["stages"])


@pytest.mark.parametrize(("state", "want"), [
    ({}, "pretrain"),
    ({"pretrain": "done"}, "sft"),
    ({"pretrain": "done", "sft": "tried"}, "sft"),
    ({"sft": "done"}, "policy"),  # DPO and GRPO start from SFT: the reward model is optional
    ({"sft": "done", "reward": "done"}, "policy"),
    ({"policy": "done"}, "eval"),
    ({"eval": "done"}, None),
])
def test_next_stage(state: dict, want: str | None) -> None:
    assert lineage.next_stage(state) == want


def test_run_of_maps_paths_under_the_root(root: Path, tmp_path: Path) -> None:
    ids = {"pretrain-a", "sft-shell"}
    assert lineage.run_of(str(root / "sft-shell" / "final"), root, ids) == "sft-shell"
    assert lineage.run_of(str(root / "pretrain-a" / "checkpoints" / "step_0000002" / "model"),
                          root, ids) == "pretrain-a"
    link = tmp_path / "alias"
    os.symlink(root, link)  # the same root reached through another path
    assert lineage.run_of(str(link / "pretrain-a"), root, ids) == "pretrain-a"
    assert lineage.run_of(str(root / "pretrain-a"), link, ids) == "pretrain-a"
    # Relative paths from the shell: the run's name, after the end of the root's path.
    assert lineage.run_of("runs/pretrain-a/final", root, ids) == "pretrain-a"
    assert lineage.run_of("pretrain-a", root, ids) == "pretrain-a"
    assert lineage.run_of("elsewhere/pretrain-a", root, ids) is None
    assert lineage.run_of(str(tmp_path / "pretrain-a"), root, ids) is None  # not under root
    assert lineage.run_of("smollm2-135m-instruct", root, ids) is None
