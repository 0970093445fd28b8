"""The course's pipeline as the playground's map: its stages (pretrain → SFT → reward model →
PPO/DPO/GRPO → evaluation, with prompting, RAG and the foundations beside them), the pages of
each, the runs made at each stage, and which run each one was started from.

A run's parents come from what it was started with: a playground run's lab.json keeps the
unresolved names (`options.model = "run:pretrain-…"`, `adapter`, `reward_model`); a run the
shell started has only its config.json, whose paths (`sft.model`, `align.model`,
`align.adapter`, `ppo.reward_model`) are mapped back to the run directories they lie in.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmlab.lab.options import RUN


@dataclass(frozen=True)
class Stage:
    id: str
    title: str
    what: str  # one line: what happens at this stage
    kinds: tuple[str, ...]  # run kinds made at this stage
    pages: tuple[str, ...]  # the playground's pages for it (hash route ids)
    main: bool = True  # on the pipeline itself, else beside it
    near: str = ""  # a side stage: the main stage it belongs beside
    optional: bool = False  # the pipeline may skip it (the next step passes over it)


STAGES: tuple[Stage, ...] = (
    Stage("pretrain", "Pretraining", "next-token loss on raw text", ("pretrain",),
          ("pretrain", "tokenizer", "attention", "inside", "nexttoken")),
    Stage("sft", "SFT", "loss on the assistant's tokens only", ("sft",), ("sftmask", "lora")),
    # DPO and GRPO start from the SFT model; only PPO needs a reward model.
    Stage("reward", "Reward model", "Bradley–Terry on preference pairs", ("reward",),
          ("prefs",), optional=True),
    Stage("policy", "PPO / DPO / GRPO", "optimise the policy on preferences or rewards",
          ("ppo", "dpo", "grpo"), ("dpo", "rl")),
    Stage("eval", "Evaluation", "accuracy, pass@k, perplexity, judges", ("eval", "judge"),
          ("eval",)),
    Stage("foundations", "Foundations", "gradient descent, backprop, overfitting", (),
          ("descent", "neuralnet", "overfit", "word2vec"), main=False, near="pretrain"),
    Stage("prompting", "Prompting", "use a model: chat templates and decoding", (),
          ("chat", "decoding", "kvcache"), main=False, near="sft"),
    Stage("rag", "RAG", "retrieve passages, answer with citations", (),
          ("rag", "embeddings"), main=False, near="policy"),
)
PAGE_TITLES = {
    "pretrain": "Pretraining", "tokenizer": "Tokenizer", "attention": "Self-attention",
    "inside": "Inside the model",
    "nexttoken": "Next token", "sftmask": "SFT masking", "lora": "LoRA", "prefs":
    "Preferences", "dpo": "DPO", "rl": "PPO / GRPO", "eval": "Evaluation", "descent":
    "Descent", "neuralnet": "Neural net", "overfit": "Overfitting", "word2vec": "Word2vec",
    "chat": "Chat", "decoding": "Decoding", "kvcache": "The KV cache", "rag": "RAG",
    "embeddings": "Embeddings",
}
# The arrows of the pipeline itself: what each stage hands on to the next.
FLOWS: tuple[tuple[str, str, str], ...] = (
    ("pretrain", "sft", "base model"),
    ("sft", "reward", "SFT model"),
    ("reward", "policy", "rewards (PPO)"),
    ("sft", "policy", "DPO, GRPO: no reward model"),
    ("policy", "eval", "tuned policy"),
)
# The page each kind of run is started and followed from.
KIND_PAGE = {"pretrain": "pretrain", "sft": "lora", "reward": "prefs", "dpo": "dpo",
             "ppo": "rl", "grpo": "rl", "eval": "eval", "judge": "eval"}
ROLES = ("model", "adapter", "reward_model")  # config.json fields naming what a run started from
ACTIVE = ("running", "stopping")


def _config(run_dir: Path) -> dict[str, Any]:
    try:
        out = json.loads((run_dir / "config.json").read_text())
        return out if isinstance(out, dict) else {}
    except (OSError, ValueError):
        return {}


def run_of(path: str, root: Path, ids: set[str]) -> str | None:
    """The run whose directory holds `path` (a run dir, its final/ or a checkpoint), or None.
    A relative path (the shell's) counts when what precedes the run's name is the end of
    the root, e.g. `runs/pretrain-…/final` for a root `…/runs`."""
    p = Path(path)
    if p.is_absolute():
        for base in {root.absolute(), Path(os.path.realpath(root))}:
            for q in (p, Path(os.path.realpath(p))):
                try:
                    rel = q.relative_to(base)
                except ValueError:
                    continue
                if rel.parts and rel.parts[0] in ids:
                    return rel.parts[0]
        return None
    tail = Path(os.path.realpath(root)).parts
    for i, part in enumerate(p.parts):
        if part in ids and (i == 0 or tuple(p.parts[:i]) == tail[-i:]):
            return part
    return None


def _named(role: str, value: str, root: Path, ids: set[str]) -> dict[str, Any]:
    if value.startswith(RUN):
        rid = value[len(RUN):].split("@")[0]  # `run:ID@step` is a checkpoint of run ID
        return {"role": role, "run": rid if rid in ids else None, "name": value}
    rid = run_of(value, root, ids)
    return {"role": role, "run": rid, "name": f"{RUN}{rid}" if rid else value}


def parents(run: dict[str, Any], root: Path, ids: set[str]) -> list[dict[str, Any]]:
    """What `run` was started from, one entry per role (model, adapter, reward_model, or any
    option naming a run): {"role", "run": a run id or None, "name"}. Pretraining starts from
    scratch: no parents."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in (run.get("options") or {}).items():
        if not isinstance(value, str) or key.startswith("_"):
            continue
        named = [v.strip() for v in value.split(",") if v.strip().startswith(RUN)]
        if named:  # an option naming runs, e.g. the models an evaluation compares
            for i, v in enumerate(named):
                out[key if i == 0 else f"{key}.{i}"] = _named(key, v, root, ids)
        elif key in ROLES and value and run.get("kind") != "pretrain":
            out[key] = _named(key, value, root, ids)
    # What the run really used (config.json): fills what the options left to defaults, and
    # is all a run started from the shell has.
    cfg = _config(root / run["id"])
    section = {**(cfg.get("sft") or {}), **(cfg.get("align") or {}),
               **(cfg.get(str(cfg.get("algo"))) or {})}
    for role in ROLES:
        value = section.get(role)
        if role not in out and isinstance(value, str) and value:
            out[role] = _named(role, value, root, ids)
    return list(out.values())


def _slim(run: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "label", "kind", "status", "step", "max_steps", "model", "adapter",
            "created", "error")
    return {k: run.get(k) for k in keys}


def next_stage(state: dict[str, str]) -> str | None:
    """The suggested next step: the main stage after the furthest one that holds a model
    (passing over optional ones), or pretraining when none does; None once evaluated."""
    main = [s for s in STAGES if s.main]
    done = [i for i, s in enumerate(main) if state.get(s.id) == "done"]
    i = done[-1] + 1 if done else 0
    while i < len(main) and main[i].optional:
        i += 1
    return main[i].id if i < len(main) else None


def pipeline(runs: list[dict[str, Any]], root: str | Path) -> dict[str, Any]:
    """The map the pipeline page draws, from RunManager.list() (newest first): the stages with
    their pages, runs and state; run-to-run edges (parent → child); the stage the newest run
    was made at (`current`) and the suggested next one (`next`).

    A stage's state: "done" when one of its runs holds a model (a finished evaluation for
    the evaluation stage), else "running" while one runs, "tried" when its runs all failed
    or hold nothing yet, "" with no runs."""
    root = Path(root)
    ids = {r["id"] for r in runs}
    by_kind = {k: s.id for s in STAGES for k in s.kinds}
    staged: dict[str, list[dict[str, Any]]] = {s.id: [] for s in STAGES}
    edges: list[dict[str, str]] = []
    for r in runs:
        stage = by_kind.get(r.get("kind", ""))
        if stage is None:
            continue
        ps = parents(r, root, ids)
        staged[stage].append({**_slim(r), "stage": stage, "page": KIND_PAGE.get(r["kind"]),
                              "parents": ps})
        edges += [{"from": p["run"], "to": r["id"], "role": p["role"]} for p in ps if p["run"]]
    state: dict[str, str] = {}
    for s in STAGES:
        rs = staged[s.id]
        if any(r["model"] or (r["kind"] in ("eval", "judge") and r["status"] == "finished")
               for r in rs):
            state[s.id] = "done"
        elif any(r["status"] in ACTIVE for r in rs):
            state[s.id] = "running"
        else:
            state[s.id] = "tried" if rs else ""
    newest = next((by_kind[r["kind"]] for r in runs if r.get("kind") in by_kind), None)
    return {
        "stages": [{**asdict(s), "kinds": list(s.kinds),
                    "pages": [{"id": p, "title": PAGE_TITLES.get(p, p)} for p in s.pages],
                    "runs": staged[s.id], "state": state[s.id]} for s in STAGES],
        "edges": edges,
        "flows": [{"from": a, "to": b, "label": t} for a, b, t in FLOWS],
        "n_runs": sum(len(v) for v in staged.values()),
        "current": newest,
        "next": next_stage(state),
    }
