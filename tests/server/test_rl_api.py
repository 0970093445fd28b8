"""The RL page's API (/api/rl/*): advantages for given rewards equal TRL's formula, a hostile
HumanEval completion shows the sandbox's own "timeout" while the server keeps answering, one
GRPO update's clip flags follow from its ratios, and PPO's returns are GAE's closed form."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from grpo_refs import trl_advantages

from llmlab.align.data import task_prompts
from llmlab.tasks.sandbox import run_code
from llmlab.tasks.verifiers import code_program

HOSTILE = "    while True:\n        pass\n"


def typed_group(answer: float) -> list[dict[str, str]]:
    return [{"text": f"The answer is {answer:g}."}, {"text": f"The answer is {answer + 1:g}."},
            {"text": f"So it is {answer:g}."}, {"text": "I am not sure."}]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_are_trls_for_typed_rewards(server, scale: str) -> None:  # noqa: ANN001
    answer = task_prompts("arithmetic-easy", 1)[0]["verifier"]["answer"]
    r = httpx.post(f"{server.url}/api/rl/group", json={
        "task": "arithmetic-easy", "index": 0, "completions": typed_group(answer)}, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["rewards"] == [1.0, 0.0, 1.0, 0.0]  # the numeric check reads the last number
    adv = out["advantages"][scale]
    assert adv["advantages"] == pytest.approx(trl_advantages(out["rewards"], 4, scale), abs=1e-6)
    if scale != "none":
        assert adv["sum"] == pytest.approx(0.0, abs=1e-6)
    assert adv["mean"] == [0.5] and adv["zero_signal"] == 0.0


def test_hostile_completion_times_out_and_server_stays_responsive(server) -> None:  # noqa: ANN001
    """An infinite loop as a HumanEval completion: the page shows the sandbox's verdict,
    "timeout" (what the sandbox itself says for that program), and /healthz answers quickly
    all the while."""
    body = {"task": "humaneval", "index": 0, "completions": [
        {"text": HOSTILE}, {"text": "    return False\n"}]}
    res: dict[str, httpx.Response] = {}
    t = threading.Thread(target=lambda: res.update(r=httpx.post(
        f"{server.url}/api/rl/group", json=body, timeout=120)))
    t0 = time.time()
    t.start()
    waits = []
    while t.is_alive():
        a = time.time()
        h = httpx.get(f"{server.url}/healthz", timeout=5)
        assert h.status_code == 200 and h.json()["status"] == "ok"
        waits.append(time.time() - a)
        time.sleep(0.2)
    t.join()
    assert time.time() - t0 >= 4  # the sandbox's 5 s limit ran out meanwhile
    assert len(waits) >= 5 and max(waits) < 2.0, waits
    out = res["r"].json()
    check = out["completions"][0]["checks"][0]
    assert check["type"] == "code" and check["status"] == "timeout" and check["score"] == 0
    assert out["completions"][0]["reward"] == 0.0
    spec = task_prompts("humaneval", 1, split="test")[0]["verifier"]
    assert run_code(code_program(spec, HOSTILE)).status == "timeout"  # the sandbox's own
    # the other completion ran its tests and failed them, as the sandbox says too
    assert out["completions"][1]["checks"][0]["status"] == \
        run_code(code_program(spec, "    return False\n")).status == "failed"


def test_grpo_step_and_ppo_on_a_group(server) -> None:  # noqa: ANN001
    answer = task_prompts("arithmetic-easy", 1)[0]["verifier"]["answer"]
    g = httpx.post(f"{server.url}/api/rl/group", json={
        "task": "arithmetic-easy", "completions": typed_group(answer)}, timeout=120).json()
    base = {"task": "arithmetic-easy", "completions": [
        {"text": c["text"], "ids": c["ids"]} for c in g["completions"]], "rewards": g["rewards"]}
    eh, el = 0.28, 0.2
    s = httpx.post(f"{server.url}/api/rl/grpo_step", json={
        **base, "loss_type": "bnpo", "lr": 1e-3, "epsilon": el, "epsilon_high": eh},
        timeout=300).json()
    assert [len(t) for t in s["tokens"]] == [len(c["ids"]) for c in g["completions"]]
    assert sum(s["seq_weight"]) == pytest.approx(1.0)  # bnpo: a mean over all tokens
    flags = []
    for i, a in enumerate(s["advantages"]):
        for j, r in enumerate(s["ratio"][i]):
            assert s["clipped_high"][i][j] == float(r > 1 + eh and a > 0)
            assert s["clipped_low"][i][j] == float(r < 1 - el and a < 0)
            flags.append(s["clipped_high"][i][j] + s["clipped_low"][i][j])
    assert s["clip_ratio"] == pytest.approx(sum(flags) / len(flags))
    assert s["loss_after"] < s["loss_before"]  # the step lowered the loss on its own batch
    assert s["sources"] and s["seq_ratio"] is None

    q = httpx.post(f"{server.url}/api/rl/grpo_step", json={
        **base, "importance_sampling_level": "sequence", "lr": 1e-3}, timeout=300).json()
    assert all(len(set(r)) == 1 for r in q["ratio"]) and len(q["seq_ratio"]) == 4

    p = httpx.post(f"{server.url}/api/rl/ppo", json={**base, "ppo_epochs": 1, "gamma": 1.0,
                                                     "lam": 0.95}, timeout=300).json()
    for i, score in enumerate(g["rewards"]):
        n = len(p["returns"][i])
        assert p["values"][i] == [0.0] * n and p["kl"][i] == [0.0] * n  # fresh head, π = π_ref
        # V = 0, KL = 0, the score at the last token: GAE's return_t = (γλ)^(n-1-t) · score
        want = [0.95 ** (n - 1 - t) * score for t in range(n)]
        assert p["returns"][i] == pytest.approx(want, abs=1e-5)
    assert len(p["epochs"]) == 1 and p["values_after"][0] != p["values"][0]


def test_bad_requests_name_the_field(server) -> None:  # noqa: ANN001
    r = httpx.post(f"{server.url}/api/rl/group", json={"task": "trivia", "reward": "format"},
                   timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "reward"
    r = httpx.post(f"{server.url}/api/rl/grpo_step", json={
        "completions": [{"text": "a"}, {"text": "b"}, {"text": "c"}], "rewards": [1.0, 0.0]},
        timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "rewards"
    r = httpx.post(f"{server.url}/api/rl/group", json={"model": "minilm"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
