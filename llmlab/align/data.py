"""Alignment data: preference pairs, RL prompts with verifiers, bundled tasks, tensors.

Preference JSONL: {"prompt": str, "chosen": str, "rejected": str} per line.
RL prompt JSONL:  {"prompt": str, "verifier": {...}} per line (see rewards.py for specs).
Bundled RL tasks: arithmetic, trivia, humaneval (llmlab.eval.datasets, offline).
Bundled preference tasks: arithmetic-prefs, trivia-prefs: SmolLM2 samples for each prompt,
ranked by the task's verifier (best vs worst, only where they differ); made on demand and
cached as preference JSONL. Bad rows raise ValueError naming the file, line and field.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from llmlab.align.rewards import check_verifier, score_many
from llmlab.train.sft import SFTBatches
from llmlab.train.sft_data import _rows

RL_TASKS = ("arithmetic", "trivia", "humaneval")
PREF_TASKS = ("arithmetic-prefs", "trivia-prefs")
ARITH_PROMPT = ("Solve this word problem. Think step by step, then finish with "
                "'The answer is N.'\n\n{q}")
TRIVIA_PROMPT = "Answer the trivia question with just the answer, no explanation.\n\n{q}"


def _str_field(obj: dict[str, Any], f: str, where: str) -> str:
    v = obj.get(f)
    if not isinstance(v, str) or not v:
        raise ValueError(f"{where}: field {f!r} must be a non-empty string, got {v!r}")
    return v


def load_prefs(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    out = []
    for n, obj in _rows(path):
        where = f"{path}:{n}"
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected an object with prompt, chosen, rejected")
        out.append({"prompt": _str_field(obj, "prompt", where),
                    "chosen": _str_field(obj, "chosen", where),
                    "rejected": _str_field(obj, "rejected", where), "where": where})
    if not out:
        raise ValueError(f"{path}: no preference pairs")
    return out


def load_prompts(path: str | Path, need_verifier: bool = True) -> list[dict[str, Any]]:
    """RL prompt rows; `verifier` may be left out only when a reward model scores (PPO)."""
    path = Path(path)
    out = []
    for n, obj in _rows(path):
        where = f"{path}:{n}"
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected an object with prompt and verifier")
        row = {"prompt": _str_field(obj, "prompt", where), "chat": obj.get("chat", True),
               "where": where}
        if "verifier" in obj:
            check_verifier(obj["verifier"], where)
            row["verifier"] = obj["verifier"]
        elif need_verifier:
            raise ValueError(f"{where}: missing field 'verifier'")
        out.append(row)
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def task_prompts(name: str, n: int = 256, split: str = "train", seed: int = 0
                 ) -> list[dict[str, Any]]:
    """Bundled RL prompts with verifiers. humaneval prompts are raw code (chat=False)."""
    from llmlab.eval import datasets as ds
    from llmlab.eval.humaneval import humaneval_problems

    if name == "arithmetic":
        return [{"prompt": ARITH_PROMPT.format(q=p.question), "chat": True,
                 "verifier": {"type": "numeric", "answer": p.target}}
                for p in ds.arithmetic_problems(n, split=split, seed=seed)]
    if name == "trivia":
        qs = ds.trivia_questions(split)  # the split eval's trivia task holds out
        random.Random(seed).shuffle(qs)
        return [{"prompt": TRIVIA_PROMPT.format(q=q.question), "chat": True,
                 "verifier": {"type": "trivia", "answers": q.answers}} for q in qs[:n]]
    if name == "humaneval":
        return [{"prompt": p["prompt"], "chat": False,
                 "verifier": {"type": "code", "prefix": p["prompt"], "tests": p["test"],
                              "entry_point": p["entry_point"]}}
                for p in humaneval_problems()[:n]]
    raise ValueError(f"unknown RL task {name!r}; bundled: {RL_TASKS}, or a .jsonl file")


def prompt_ids(tok: Any, template: Any, prompt: str, chat: bool = True) -> list[int]:
    text = template.render([{"role": "user", "content": prompt}]) if chat else prompt
    return tok.encode(text, allowed_special="all")


def completion_ids(tok: Any, template: Any, text: str, chat: bool = True) -> list[int]:
    """A chat completion ends with the end-of-turn token, so training teaches stopping."""
    end = template.stop[0] if chat and template.stop else ""
    return tok.encode(text + end, allowed_special="all")


def pad_right(seqs: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def pref_tensors(tok: Any, template: Any, pairs: list[dict[str, Any]], seq_len: int
                 ) -> dict[str, torch.Tensor]:
    """{chosen,rejected}_{ids,mask,cmask}: right-padded to a shared length; cmask marks
    completion tokens. Prompts are cut from the left so completions keep seq_len // 2."""
    out: dict[str, list[list[int]]] = {"chosen": [], "rejected": [], "chosen_c": [],
                                       "rejected_c": []}
    for p in pairs:
        pi = prompt_ids(tok, template, p["prompt"])
        for side in ("chosen", "rejected"):
            ci = completion_ids(tok, template, p[side])[: max(seq_len // 2, seq_len - len(pi))]
            keep = pi[-(seq_len - len(ci)):] if seq_len > len(ci) else []
            out[side].append(keep + ci)
            out[side + "_c"].append([0] * len(keep) + [1] * len(ci))
    T = max(len(s) for side in ("chosen", "rejected") for s in out[side])
    res: dict[str, torch.Tensor] = {}
    for side in ("chosen", "rejected"):
        padded = [s + [0] * (T - len(s)) for s in out[side]]
        ids, mask = pad_right(padded)
        mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in out[side]])
        res[f"{side}_ids"], res[f"{side}_mask"] = ids, mask
        res[f"{side}_cmask"] = torch.tensor([c + [0] * (T - len(c)) for c in out[side + "_c"]])
    return res


def make_prefs(lm: Any, prompts: list[dict[str, Any]], samples: int = 4,
               max_new_tokens: int = 96, temperature: float = 1.0, seed: int = 0
               ) -> list[dict[str, Any]]:
    """Sample `samples` completions per prompt and pair the best with the worst by reward."""
    from llmlab.generate.chat import template_for
    from llmlab.generate.engine import complete, make_params

    template = template_for(lm)
    ids = [prompt_ids(lm.tokenizer, template, p["prompt"], p.get("chat", True))
           for p in prompts for _ in range(samples)]
    params = make_params(lm.tokenizer, max_new_tokens=max_new_tokens, temperature=temperature,
                         seed=seed, stop=list(template.stop))
    texts = [c.text for c in complete(lm.model, lm.tokenizer, ids, params)]
    rewards = score_many(texts, [p["verifier"] for p in prompts for _ in range(samples)])
    out = []
    for i, p in enumerate(prompts):
        grp = list(zip(rewards[i * samples:(i + 1) * samples],
                       texts[i * samples:(i + 1) * samples], strict=True))
        best, worst = max(grp, key=lambda x: x[0]), min(grp, key=lambda x: x[0])
        if best[0] > worst[0]:
            out.append({"prompt": p["prompt"], "chosen": best[1], "rejected": worst[1]})
    return out


def task_prefs(lm: Any, name: str, n: int, cache_dir: str | Path, seed: int = 0
               ) -> list[dict[str, Any]]:
    """arithmetic-prefs / trivia-prefs, cached as JSONL keyed by task, n and seed."""
    if name not in PREF_TASKS:
        raise ValueError(f"unknown preference task {name!r}; bundled: {PREF_TASKS}")
    cache = Path(cache_dir) / f"{name}-n{n}-seed{seed}.jsonl"
    if not cache.exists():
        pairs = make_prefs(lm, task_prompts(name.removesuffix("-prefs"), n, seed=seed), seed=seed)
        if not pairs:
            raise RuntimeError(f"{name}: no prompt gave samples with different rewards")
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
        tmp.replace(cache)
    return load_prefs(cache)


class PairBatches(SFTBatches):
    """SFTBatches' exact-resume order over preference-pair rows."""

    def __init__(self, rows: dict[str, torch.Tensor], batch_size: int, seed: int,
                 rank: int = 0, world: int = 1) -> None:
        self.rows, self.bs, self.seed, self.rank, self.world = rows, batch_size, seed, rank, world
        self.n = rows["chosen_ids"].shape[0]
        self.k = 0
