"""Alignment data: preference pairs, RL prompts with verifiers, bundled tasks, tensors.

Preference JSONL: {"prompt": str, "chosen": str, "rejected": str [, "margin": float]} per line.
RL prompt JSONL:  {"prompt": str, "verifier": {...}} per line (specs: llmlab/tasks/verifiers.py).
Bundled RL tasks: arithmetic, arithmetic-easy, trivia, humaneval (llmlab.tasks, offline).
Bundled preference tasks: arithmetic-prefs, arithmetic-easy-prefs, trivia-prefs: SmolLM2
samples for each prompt, ranked by the task's verifier (best vs worst, only where they differ;
`length-matched` pairing takes the best/worst pair closest in length, `perturbed` a right
sample against the same text with its answer changed); made on demand and
cached as preference JSONL. Bad rows raise ValueError naming the file, line and field.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import torch

from llmlab.data.jsonl import read_rows
from llmlab.generate.chat import template_for
from llmlab.generate.engine import complete, make_params
from llmlab.tasks import TASKS
from llmlab.tasks.verifiers import check_verifier, score_many
from llmlab.train.sft import SFTBatches
from llmlab.weights.io import atomic_write_bytes
from llmlab.weights.registry import cache_dir as llmlab_cache

RL_TASKS = ("arithmetic", "arithmetic-easy", "trivia", "humaneval")
PREF_TASKS = ("arithmetic-prefs", "arithmetic-easy-prefs", "trivia-prefs")
# How make_prefs picks a pair among a prompt's best- and worst-rewarded samples. A reward
# model learns any cue that separates chosen from rejected, and answer length is the usual
# one (Singhal et al. 2023, "A Long Way to Go"); length-matched removes most of it.
# "perturbed" pairs a right sample with itself, its answer changed (numeric tasks): a pair
# that differs only in correctness, in the same words, length and style.
PAIRINGS = ("extremes", "length-matched", "perturbed")


def _str_field(obj: dict[str, Any], f: str, where: str) -> str:
    v = obj.get(f)
    if not isinstance(v, str) or not v:
        raise ValueError(f"{where}: field {f!r} must be a non-empty string, got {v!r}")
    return v


def load_prefs(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    out = []
    for n, obj in read_rows(path):
        where = f"{path}:{n}"
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected an object with prompt, chosen, rejected")
        row = {"prompt": _str_field(obj, "prompt", where),
               "chosen": _str_field(obj, "chosen", where),
               "rejected": _str_field(obj, "rejected", where), "where": where}
        if "margin" in obj:  # the reward model's BT margin for this pair (TRL's field)
            if not isinstance(obj["margin"], (int, float)) or isinstance(obj["margin"], bool):
                raise ValueError(f"{where}: field 'margin' must be a number, got "
                                 f"{obj['margin']!r}")
            row["margin"] = float(obj["margin"])
        for f in ("chosen_reward", "rejected_reward"):  # the verifier's, in a task's pairs
            if isinstance(obj.get(f), (int, float)) and not isinstance(obj[f], bool):
                row[f] = float(obj[f])
        out.append(row)
    if not out:
        raise ValueError(f"{path}: no preference pairs")
    return out


def load_prompts(path: str | Path, need_verifier: bool = True) -> list[dict[str, Any]]:
    """RL prompt rows; `verifier` may be left out only when a reward model scores (PPO)."""
    path = Path(path)
    out = []
    for n, obj in read_rows(path):
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
    """Bundled RL prompts with verifiers (Task.rl_prompts). humaneval prompts are raw code
    (chat=False)."""
    if name not in RL_TASKS:
        raise ValueError(f"unknown RL task {name!r}; bundled: {RL_TASKS}, or a .jsonl file")
    return TASKS[name].rl_prompts(n, split, seed)


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
    """{chosen,rejected}_{ids,mask,cmask} (+ margin when rows have one): right-padded to a
    shared length; cmask marks completion tokens. Prompts are cut from the left so
    completions keep seq_len // 2."""
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
    if any("margin" in p for p in pairs):
        res["margin"] = torch.tensor([p.get("margin", 0.0) for p in pairs])
    return res


# room for an answer to finish
PREF_TOKENS = {"arithmetic-prefs": 160, "arithmetic-easy-prefs": 40, "trivia-prefs": 32}


def hinted(prompt: dict[str, Any]) -> str:
    """The prompt with its reference answer as a hint (STaR's "rationalization", Zelikman et
    al. 2022): a small model then often answers right, in its own words."""
    v = prompt["verifier"]
    answer = v["answers"][0] if v["type"] == "trivia" else v.get("answer")
    if answer is None:
        raise ValueError(f"no reference answer to hint with in a {v['type']!r} verifier")
    if isinstance(answer, float) and answer.is_integer():
        # "38", not "38.0": hinted samples copy the hint's spelling, and a ".0" that only
        # chosen answers carry would let a reward model score the spelling, not the sum.
        answer = int(answer)
    return f"{prompt['prompt']}\n\n(Hint: the answer is {answer}.)"


def make_prefs(lm: Any, prompts: list[dict[str, Any]], samples: int = 4,
               max_new_tokens: int = 96, temperature: float = 1.0, seed: int = 0,
               hint: bool = False, chunk: int = 64, pairing: str = "extremes"
               ) -> list[dict[str, Any]]:
    """Sample `samples` completions per prompt and pair the best with the worst by reward,
    where they differ; with `pairing="length-matched"`, the best/worst pair whose texts are
    closest in length (first-sampled on ties); with "perturbed", a right sample against
    itself with its answer changed (`perturb_answer`). With `hint`, the second half of the
    samples see the reference answer in their prompt (the pair's prompt stays the plain one),
    so far fewer prompts are spent on groups that are all wrong; the verifier still decides
    which sample is chosen. Rows keep both rewards (`chosen_reward`, `rejected_reward`); empty
    completions are dropped (a pair needs two texts). Generates `chunk` sequences at a time."""
    check_pairing(pairing)  # before the slow sampling
    if pairing == "perturbed":
        _check_numeric(prompts)
    texts, rewards = sample_groups(lm, prompts, samples, max_new_tokens, temperature, seed,
                                   hint, chunk)
    return pair_groups(prompts, texts, rewards, samples, pairing, seed)


def sample_groups(lm: Any, prompts: list[dict[str, Any]], samples: int = 4,
                  max_new_tokens: int = 96, temperature: float = 1.0, seed: int = 0,
                  hint: bool = False, chunk: int = 64, progress: bool = True
                  ) -> tuple[list[str], list[float]]:
    """make_prefs' sampling step: `samples` completions per prompt (prompt-major; with
    `hint`, the second half of each prompt's samples saw `hinted(prompt)`) and the task
    verifier's reward of each."""
    from tqdm import tqdm

    template = template_for(lm)
    rows = [p for p in prompts for _ in range(samples)]
    texts_in = [hinted(p) if hint and j >= samples // 2 else p["prompt"]
                for p in prompts for j in range(samples)]
    ids = [prompt_ids(lm.tokenizer, template, t, p.get("chat", True))
           for t, p in zip(texts_in, rows, strict=True)]
    texts: list[str] = []
    for k in tqdm(range(0, len(ids), chunk), desc="sampling preference pairs", unit="batch",
                  disable=not progress):
        params = make_params(lm.tokenizer, max_new_tokens=max_new_tokens,
                             temperature=temperature, seed=seed + k, stop=list(template.stop))
        texts += [c.text for c in complete(lm.model, lm.tokenizer, ids[k:k + chunk], params)]
    return texts, score_many(texts, [p["verifier"] for p in rows])


def pair_groups(prompts: list[dict[str, Any]], texts: list[str], rewards: list[float],
                samples: int, pairing: str = "extremes", seed: int = 0
                ) -> list[dict[str, Any]]:
    """make_prefs' pairing step over `sample_groups`' output: one pair per prompt at most."""
    if pairing == "perturbed":
        return perturbed_pairs(prompts, texts, rewards, samples, seed)
    check_pairing(pairing)
    out = []
    for i, p in enumerate(prompts):
        grp = [(r, t) for r, t in zip(rewards[i * samples:(i + 1) * samples],
                                      texts[i * samples:(i + 1) * samples], strict=True)
               if t.strip()]
        if not grp:
            continue
        pair = pick_pair(grp, pairing)
        if pair is not None:
            (rb, best), (rw, worst) = pair
            out.append({"prompt": p["prompt"], "chosen": best, "rejected": worst,
                        "chosen_reward": rb, "rejected_reward": rw})
    return out


def check_pairing(pairing: str) -> None:
    if pairing not in PAIRINGS:
        raise ValueError(f"pref pairing must be one of {PAIRINGS}, got {pairing!r}")


def _check_numeric(prompts: list[dict[str, Any]]) -> None:
    for p in prompts:
        if (kind := p["verifier"].get("type")) != "numeric":
            raise ValueError(f"perturbed pairs need numeric verifiers, got {kind!r}")


def perturb_answer(text: str, answer: float, rng: random.Random) -> str | None:
    """`text` with every standalone occurrence of the integer `answer` replaced by a nearby
    wrong one (answer ± 1..3, not negative), or None when the text never writes it."""
    if not float(answer).is_integer():
        return None
    a = int(answer)
    pat = re.compile(rf"(?<![\d.]){a}(?![\d])")
    if not pat.search(text):
        return None
    wrong = rng.choice([a + d for d in (-3, -2, -1, 1, 2, 3) if a + d >= 0])
    return pat.sub(str(wrong), text)


def perturbed_pairs(prompts: list[dict[str, Any]], texts: list[str], rewards: list[float],
                    samples: int, seed: int = 0) -> list[dict[str, Any]]:
    """For each prompt with a right sample (reward 1) that states its numeric answer: that
    sample (the first such) as chosen, and the same text with the answer changed as rejected,
    kept only when the verifier scores the change lower."""
    _check_numeric(prompts)
    rng = random.Random(seed)
    out = []
    for i, p in enumerate(prompts):
        v = p["verifier"]
        for r, t in zip(rewards[i * samples:(i + 1) * samples],
                        texts[i * samples:(i + 1) * samples], strict=True):
            bad = perturb_answer(t, v["answer"], rng) if r == 1.0 else None
            if bad is not None and (rb := score_many([bad], [v])[0]) < r:
                out.append({"prompt": p["prompt"], "chosen": t, "rejected": bad,
                            "chosen_reward": r, "rejected_reward": rb})
                break
    return out


def pick_pair(group: list[tuple[float, str]], pairing: str = "extremes"
              ) -> tuple[tuple[float, str], tuple[float, str]] | None:
    """(chosen, rejected) among one prompt's (reward, text) samples: a highest- and a
    lowest-rewarded one (the first sampled of each, or with "length-matched" the two closest
    in length), or None when all rewards are equal."""
    if pairing not in ("extremes", "length-matched"):
        check_pairing(pairing)
        raise ValueError(f"pick_pair chooses among samples; {pairing!r} pairs are made by "
                         "perturbed_pairs")
    hi, lo = max(r for r, _ in group), min(r for r, _ in group)
    if hi == lo:
        return None
    tops, bottoms = [g for g in group if g[0] == hi], [g for g in group if g[0] == lo]
    if pairing == "extremes":
        return tops[0], bottoms[0]
    return min(((b, w) for b in tops for w in bottoms),
               key=lambda bw: abs(len(bw[0][1]) - len(bw[1][1])))


def task_prefs(lm: Any, name: str, n: int, cache_dir: str | Path | None = None, seed: int = 0,
               samples: int = 4, hint: bool = False, temperature: float = 1.0,
               pairing: str = "extremes") -> list[dict[str, Any]]:
    """arithmetic[-easy]-prefs / trivia-prefs from the first n prompts of the task (train split),
    sampled from `lm`, cached as JSONL (default $LLMLAB_CACHE/prefs) keyed by the model and
    every setting, since sampling them is the slow part."""
    if name not in PREF_TASKS:
        raise ValueError(f"unknown preference task {name!r}; bundled: {PREF_TASKS}")
    check_pairing(pairing)  # a bad --pref-pairing fails before any cache lookup
    if cache_dir is None:
        cache_dir = llmlab_cache() / "prefs"
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(getattr(lm, "name", "model")))
    cache = Path(cache_dir) / (f"{model}-{name}-n{n}-k{samples}-t{temperature:g}"
                               f"{'-hint' if hint else ''}"
                               f"{'' if pairing == 'extremes' else '-' + pairing}"
                               f"-seed{seed}.jsonl")
    if not cache.exists():
        prompts = task_prompts(name.removesuffix("-prefs"), n, seed=seed)
        pairs = make_prefs(lm, prompts, samples, PREF_TOKENS[name], temperature, seed, hint,
                           pairing=pairing)
        if not pairs:
            raise RuntimeError(f"{name}: no prompt gave samples with different rewards")
        cache.parent.mkdir(parents=True, exist_ok=True)

        atomic_write_bytes(cache, "".join(json.dumps(p) + "\n" for p in pairs).encode())
    return load_prefs(cache)


class PairBatches(SFTBatches):
    """SFTBatches' exact-resume order over preference-pair rows."""

    def __init__(self, rows: dict[str, torch.Tensor], batch_size: int, seed: int,
                 rank: int = 0, world: int = 1) -> None:
        self.rows, self.bs, self.seed, self.rank, self.world = rows, batch_size, seed, rank, world
        self.n = rows["chosen_ids"].shape[0]
        self.k = 0
