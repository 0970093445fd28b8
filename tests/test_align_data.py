"""Verifiable rewards (incl. hostile code) and alignment data loading / tensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmlab.align.data import load_prefs, load_prompts, pref_tensors
from llmlab.tasks.verifiers import check_verifier, score, score_many

ADD = {"type": "code", "prefix": "def add(a, b):\n", "entry_point": "add",
       "tests": "def check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n"}


def test_numeric_trivia_format_sum() -> None:
    num = {"type": "numeric", "answer": 1234}
    assert score("so 1,234 in total. The answer is 1234.", num) == 1.0
    assert score("The answer is 1235.", num) == 0.0
    assert score("no idea", num) == 0.0
    tri = {"type": "trivia", "answers": ["The Eiffel Tower"]}
    assert score("eiffel tower!", tri) == 1.0 and score("Big Ben", tri) == 0.0
    fmt = {"type": "format", "pattern": r"^<think>.*</think>"}
    assert score("<think>a\nb</think> 4", fmt) == 1.0 and score("4", fmt) == 0.0
    both = {"type": "sum", "parts": [fmt, num], "weights": [0.25, 1.0]}
    assert score_many(["<think>x</think> The answer is 1234", "The answer is 1234", "x"],
                      [both] * 3) == [1.25, 1.0, 0.0]


def test_code_verifier_pass_fail() -> None:
    assert score_many(["    return a + b\n", "    return a - b\n", "    return a +\n"],
                      [ADD] * 3) == [1.0, 0.0, 0.0]


HOSTILE = [
    "    import sys; sys.exit(0)\n",  # exit 0 before the tests run
    "    import os; os._exit(0)\n",
    "    while True: pass\n",  # wall/CPU limit
    "    import socket; socket.create_connection(('1.1.1.1', 80)); return a + b\n",
    "    x = ' ' * (10 ** 10); return a + b\n",  # memory limit
]


def test_code_verifier_scores_hostile_completions_zero(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    write = f"    open({str(canary)!r}, 'w').write('x'); return a + b\n"  # outside the sandbox
    spec = {**ADD, "timeout": 3}
    got = score_many([*HOSTILE, write], [spec] * (len(HOSTILE) + 1))
    assert got == [0.0] * (len(HOSTILE) + 1)
    assert not canary.exists()


@pytest.mark.parametrize("spec,msg", [
    ({"type": "numeric"}, "needs field 'answer'"),
    ({"type": "numeric", "answer": "x"}, "must be a number"),
    ({"type": "nope"}, "verifier.type"),
    ({"type": "trivia", "answers": []}, "non-empty list"),
    ({"type": "format", "pattern": "("}, "not a regex"),
    ({"type": "sum", "parts": [{"type": "code"}]}, "parts\\[0\\].*'tests'"),
])
def test_bad_verifiers(spec: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        check_verifier(spec, "f:1")


def _write(p: Path, rows: list) -> Path:
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return p


def test_bad_rows_name_line_and_field(tmp_path: Path) -> None:
    ok = {"prompt": "p", "chosen": "a", "rejected": "b"}
    f = _write(tmp_path / "p.jsonl", [ok, {"prompt": "p", "chosen": "a"}])
    with pytest.raises(ValueError, match=r"p.jsonl:2: field 'rejected'"):
        load_prefs(f)
    f = _write(tmp_path / "q.jsonl", [ok, "{oops"])
    with pytest.raises(ValueError, match=r"q.jsonl:2"):
        load_prefs(f)
    g = _write(tmp_path / "r.jsonl", [{"prompt": "p", "verifier": {"type": "numeric",
                                                                   "answer": 1}},
                                      {"prompt": "p", "verifier": {"type": "trivia"}}])
    with pytest.raises(ValueError, match=r"r.jsonl:2: verifier of type 'trivia' needs"):
        load_prompts(g)
    assert len(load_prefs(_write(tmp_path / "s.jsonl", [ok, ok]))) == 2


class CharTok:
    """One id per character: lets the test know exactly which ids each piece gives."""

    def encode(self, text: str, allowed_special: str = "all") -> list[int]:
        return [ord(c) % 97 + 1 for c in text]


class Tmpl:
    stop = ["|"]

    def render(self, msgs: list[dict], add_generation_prompt: bool = True) -> str:
        return "U:" + msgs[0]["content"] + ">"


def test_pref_tensors_mark_completion_tokens_only() -> None:
    pairs = [{"prompt": "ab", "chosen": "xyz", "rejected": "q"}]
    t = pref_tensors(CharTok(), Tmpl(), pairs, seq_len=32)
    enc = CharTok().encode
    assert t["chosen_ids"][0].tolist() == enc("U:ab>xyz|")
    assert t["chosen_cmask"][0].tolist() == [0] * 5 + [1] * 4
    assert t["rejected_ids"][0, :7].tolist() == enc("U:ab>q|")
    assert t["rejected_mask"][0].tolist() == [1] * 7 + [0] * 2
    assert t["rejected_cmask"][0].tolist() == [0] * 5 + [1] * 2 + [0] * 2
    # a long prompt is cut from the left, the completion kept
    t = pref_tensors(CharTok(), Tmpl(), [{"prompt": "a" * 50, "chosen": "xy",
                                          "rejected": "z"}], seq_len=10)
    assert t["chosen_ids"].shape[1] == 10 and t["chosen_cmask"][0, -3:].tolist() == [1, 1, 1]
    assert torch.equal(t["chosen_ids"][0, -3:], torch.tensor(enc("xy|")))


def test_pref_margin_field(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 0.5},
            {"prompt": "q", "chosen": "c", "rejected": "d"}]
    pairs = load_prefs(_write(tmp_path / "m.jsonl", rows))
    t = pref_tensors(CharTok(), Tmpl(), pairs, seq_len=16)
    assert t["margin"].tolist() == [0.5, 0.0]
    assert "margin" not in pref_tensors(CharTok(), Tmpl(), pairs[1:], seq_len=16)
    with pytest.raises(ValueError, match=r"n.jsonl:1: field 'margin' must be a number"):
        load_prefs(_write(tmp_path / "n.jsonl", [{**rows[0], "margin": "big"}]))


def test_grpo_rollouts_with_accumulation_are_reserved_after_each_update() -> None:
    """K micro-batches per optimizer step are K rollouts; with `iterations` passes, the step's
    rollouts come back in order on the following steps (each pass after an update), never
    twice within one step."""
    from llmlab.align.config import GRPOConfig
    from llmlab.align.grpo import RolloutBatches

    made = iter(range(100))
    b = RolloutBatches(None, None, None, [], GRPOConfig(iterations=2), grad_accum=2)  # type: ignore[arg-type]
    b._rollout = lambda: {"r": next(made)}  # type: ignore[method-assign]
    served = [b.next_batch()["r"] for _ in range(8)]
    assert served == [0, 1, 0, 1, 2, 3, 2, 3]
    one = RolloutBatches(None, None, None, [], GRPOConfig(iterations=1), grad_accum=3)  # type: ignore[arg-type]
    one._rollout = lambda: {"r": next(made)}  # type: ignore[method-assign]
    assert [one.next_batch()["r"] for _ in range(4)] == [4, 5, 6, 7]


def test_pick_pair_length_matched_is_the_closest_right_wrong_pair() -> None:
    """Against brute force over every (highest, lowest)-reward combination; extremes keeps
    the first sampled of each; equal rewards give no pair; a bad pairing name fails."""
    import itertools
    import random

    from llmlab.align.data import pick_pair

    rng = random.Random(0)
    for _ in range(200):
        grp = [(float(rng.randint(0, 2)), "x" * rng.randint(1, 30)) for _ in range(6)]
        hi, lo = max(r for r, _ in grp), min(r for r, _ in grp)
        got = pick_pair(grp, "length-matched")
        if hi == lo:
            assert got is None and pick_pair(grp) is None
            continue
        best = min(abs(len(b[1]) - len(w[1])) for b, w in itertools.product(grp, grp)
                   if b[0] == hi and w[0] == lo)
        assert got is not None and (got[0][0], got[1][0]) == (hi, lo)
        assert abs(len(got[0][1]) - len(got[1][1])) == best
        assert pick_pair(grp) == (next(g for g in grp if g[0] == hi),
                                  next(g for g in grp if g[0] == lo))
    with pytest.raises(ValueError, match="pairing must be one of"):
        pick_pair([(1.0, "a"), (0.0, "b")], "shortest")


def test_hint_spells_the_answer_as_the_task_does() -> None:
    """An integral numeric answer is hinted as "23", never "23.0" (a spelling only hinted,
    hence mostly chosen, samples would copy); trivia hints the first accepted answer."""
    from llmlab.align.data import hinted, task_prompts

    for p in task_prompts("arithmetic-easy", 20):
        want = int(p["verifier"]["answer"])
        assert hinted(p).endswith(f"(Hint: the answer is {want}.)")
    t = task_prompts("trivia", 1)[0]
    assert hinted(t).endswith(f"(Hint: the answer is {t['verifier']['answers'][0]}.)")
    assert hinted({"prompt": "q", "verifier": {"type": "numeric", "answer": 2.5}}).endswith(
        "is 2.5.)")


def test_perturbed_pairs_differ_only_in_a_now_wrong_answer() -> None:
    """Each perturbed rejection is the chosen text with the answer's standalone occurrences
    (not digits inside other numbers) replaced by one wrong number; the numeric verifier scores
    chosen 1 and rejected 0; wrong samples and texts that never write the answer give no pair;
    non-numeric verifiers are refused."""
    import random
    import re

    from llmlab.align.data import make_prefs, perturb_answer, perturbed_pairs

    rng = random.Random(0)
    text = "13 + 10 = 23 (not 123 or 2.3). The answer is 23."
    bad = perturb_answer(text, 23.0, rng)
    assert bad is not None and bad != text
    new = set(re.findall(r"(?<![\d.])\d+(?![\d.])", bad)) - {"13", "10", "123"}
    assert len(new) == 1 and (w := int(new.pop())) != 23 and abs(w - 23) <= 3
    assert bad == text.replace("= 23 ", f"= {w} ").replace("is 23.", f"is {w}.")
    assert perturb_answer("no number here", 23.0, rng) is None
    assert perturb_answer("it is 2.5", 2.5, rng) is None
    assert all(int(x) >= 0 for x in re.findall(r"\d+", perturb_answer("0", 0.0, rng) or ""))

    prompts = [{"prompt": f"q{i}", "verifier": {"type": "numeric", "answer": a}}
               for i, a in enumerate([23.0, 7.0, 5.0])]
    texts = ["13 + 10 = 23.", "3 + 4 = 8.",  # right; wrong
             "seven", "3 + 4 = 7.",  # right without the digits; right
             "2 + 2 = 4", "no"]  # both wrong
    rows = perturbed_pairs(prompts, texts, score_many(texts, [p["verifier"] for p in prompts
                                                               for _ in range(2)]), 2)
    assert [r["prompt"] for r in rows] == ["q0", "q1"]
    assert [r["chosen"] for r in rows] == ["13 + 10 = 23.", "3 + 4 = 7."]
    for r, p in zip(rows, prompts, strict=False):
        assert score_many([r["chosen"], r["rejected"]], [p["verifier"]] * 2) == [1.0, 0.0]
    trivia = [{"prompt": "q", "verifier": {"type": "trivia", "answers": ["x"]}}]
    with pytest.raises(ValueError, match="numeric verifiers"):
        perturbed_pairs(trivia, ["x"], [1.0], 1)
    with pytest.raises(ValueError, match="numeric verifiers, got 'trivia'"):
        make_prefs(None, trivia, pairing="perturbed")  # refused before any sampling
