"""End-to-end alignment runs on a tiny random Llama with SmolLM2's tokenizer: `llmlab reward`
(its exported reward model scores as transformers' LlamaForSequenceClassification + PEFT),
`llmlab ppo` (metrics, resume, reward model or verifier) and rollout log-probs against TRL."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from inproc import llmlab
from reward_ref import HFReward, make_prefs_file, make_tiny
from train_common import metrics

from llmlab.align.ppo import LOSS_METRICS, ROLLOUT_METRICS

FAST = ["--no-progress", "--no-tensorboard", "--threads", "1"]


def align(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = llmlab(*args)
    if check and r.returncode:
        raise AssertionError(r.stderr[-3000:])
    return r


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def prefs(tmp_path_factory) -> Path:
    return make_prefs_file(tmp_path_factory.mktemp("prefs") / "prefs.jsonl")


@pytest.fixture(scope="module")
def reward_run(tiny, prefs, tmp_path_factory) -> Path:
    """A LoRA reward model trained on `prefs`; 8 pairs held out."""
    out = tmp_path_factory.mktemp("rm") / "run"
    align("reward", "--model", str(tiny), "--data", str(prefs), "--out", str(out),
          "--max-steps", "20", "--lr", "1e-2", "--val-examples", "8", "--eval-every", "10",
          *FAST)
    return out


def test_reward_command_end_to_end(reward_run: Path) -> None:
    rows = metrics(reward_run)
    assert [r["step"] for r in rows] == list(range(1, 21))
    for k in ("loss", "accuracy", "rewards/chosen", "rewards/rejected", "rewards/margin"):
        assert all(k in r for r in rows), k
    assert rows[-1]["loss"] < rows[0]["loss"]
    ev = json.loads((reward_run / "eval.json").read_text())
    assert ev["pairwise_accuracy"] == 1.0  # 8 held-out pairs of a trivially separable preference
    # The held-out metrics over steps, at each evaluation; the last one is eval.json's.
    held = [r for r in rows if "val/pairwise_accuracy" in r]
    assert [r["step"] for r in held] == [10, 20] and "val_loss" in held[0]
    assert held[-1]["val/pairwise_accuracy"] == ev["pairwise_accuracy"]
    assert held[-1]["val/margin"] == pytest.approx(ev["margin"]) and ev["margin"] > 0
    # "yes" and "no" are one token each: length tells no pair apart
    assert held[0]["val/length_baseline"] == ev["length_baseline"] == 0.5


def test_reward_model_scores_as_transformers_sequence_classifier(tiny: Path, reward_run: Path,
                                                                 tmp_path: Path) -> None:
    """Our exported reward model (PEFT adapter + score head) read by transformers + PEFT:
    LlamaForSequenceClassification scores the last token's final hidden state, as ours."""
    from llmlab.align.reward import load_reward_model

    rm = load_reward_model(reward_run)
    ref = HFReward(tiny, reward_run / "final", tmp_path)
    g = torch.Generator().manual_seed(0)
    for n in (5, 17):  # one row each, so no padding convention is involved
        ids = torch.randint(3, 49152, (1, n), generator=g)
        with torch.no_grad():
            ours = rm.score(ids, torch.ones_like(ids))
        assert torch.allclose(ours[0], ref(ids), atol=1e-4), (ours, ref(ids))


def test_dpo_command_end_to_end_with_held_out_eval(tiny: Path, prefs: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "dpo"
    align("dpo", "--model", str(tiny), "--data", str(prefs), "--out", str(out),
          "--max-steps", "8", "--lr", "1e-2", "--val-examples", "8", "--beta", "0.1", *FAST)
    rows = metrics(out)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"):
        assert all(k in r for r in rows), k
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-5  # LoRA starts at the reference
    ev = json.loads((out / "eval.json").read_text())
    assert ev["pairs"] == 8 and ev["rewards/accuracy"] == 1.0 and ev["rewards/margin"] > 0
    assert ev["logp_accuracy"] == 1.0 and ev["logp_margin"] > ev["ref_logp_margin"]


PPO = ["--task", "arithmetic", "--max-examples", "16", "--batch-size", "2", "--grad-accum",
       "2", "--ppo-epochs", "2", "--max-new-tokens", "8", "--lr", "1e-3", "--ckpt-every", "2",
       *FAST]


def test_ppo_tiny_run_with_reward_model_metrics_and_resume(tiny: Path, reward_run: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "ppo"
    align("ppo", "--model", str(tiny), "--reward-model", str(reward_run), "--out", str(out),
          "--max-steps", "4", *PPO)
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for k in (*ROLLOUT_METRICS, *LOSS_METRICS, "loss", "grad_norm"):
        assert all(k in r for r in rows), k
    # two rollouts, each served for 2 epochs: the rollout's numbers repeat within it
    assert rows[0]["reward/mean"] == rows[1]["reward/mean"] != rows[2]["reward/mean"]
    # epoch 1 scores the rollout with the weights that sampled it: ratio 1, nothing clipped
    assert rows[0]["approxkl"] < 1e-10 and rows[0]["clipfrac"] == 0.0
    assert rows[0]["kl"] == 0.0  # LoRA starts at the reference
    # the k1 estimate is a signed sample mean: after updates it is nonzero, not always > 0
    assert rows[2]["kl"] != 0.0 and rows[0]["value_loss"] > 0.0
    assert rows[0]["reward/std"] > 0.0  # the reward model tells completions apart
    assert (out / "final" / "score_head.safetensors").exists()
    align("ppo", "--model", str(tiny), "--reward-model", str(reward_run), "--out", str(out),
          "--max-steps", "6", "--resume", *PPO)
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "config.json").read_text())["ppo"]["kl_coef"] == 0.05


def test_ppo_verifier_full_weights_and_bad_input(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "ppo"
    align("ppo", "--model", str(tiny), "--out", str(out), "--max-steps", "2", "--peft", "none",
          "--kl-estimator", "k3", "--missing-eos-penalty", "1", *PPO)
    rows = metrics(out)
    assert len(rows) == 2 and all(k in rows[0] for k in ROLLOUT_METRICS)
    # a random model never answers right or stops: every score is 0 - penalty 1
    assert rows[0]["reward/mean"] == -1.0
    import llmlab

    assert llmlab.load(str(out)).model.cfg.d_model == 32  # final/ is a loadable LM
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    r = align("ppo", "--model", str(tiny), "--out", str(tmp_path / "x"), "--data",
              str(tmp_path / "p.jsonl"), *FAST, check=False)
    assert r.returncode != 0 and "p.jsonl:1: missing field 'verifier'" in r.stderr
    r = align("ppo", "--model", str(tiny), "--out", str(tmp_path / "x"), "--task",
              "arithmetic", "--reward-model", str(tmp_path), *FAST, check=False)
    assert r.returncode != 0 and "not a reward model" in r.stderr


def test_grpo_command_end_to_end_with_resume(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "grpo"
    args = ["grpo", "--model", str(tiny), "--task", "arithmetic", "--out", str(out),
            "--num-generations", "2", "--prompts-per-step", "2", "--max-new-tokens", "6",
            "--beta", "0.04", "--zero-std-warn", "2", "--lr", "1e-3", *FAST]
    align(*args, "--max-steps", "3")
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for k in ("loss", "grad_norm", "reward/mean", "reward/std", "completion_length",
              "frac_reward_zero_std", "kl", "clip_ratio"):
        assert all(k in r for r in rows), k
    assert rows[0]["kl"] == 0.0  # LoRA starts at the reference (adapters disabled)
    assert all(0 < r["completion_length"] <= 6 for r in rows)
    align(*args, "--max-steps", "4", "--resume")
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]
    r = align("grpo", "--model", str(tiny), "--task", "nope", "--out", str(tmp_path / "x"),
              *FAST, check=False)
    assert r.returncode != 0 and "nope" in r.stderr


def test_grpo_held_out_accuracy_over_steps(tiny: Path, tmp_path: Path) -> None:
    """--eval-prompts: the starting model's held-out accuracy in a step-0 record of its own,
    then at each --eval-every step with its Wilson interval and the paired change."""
    from llmlab.tasks.metrics import wilson_interval
    from llmlab.train.report import summarize

    out = tmp_path / "grpo"
    base = ["grpo", "--model", str(tiny), "--task", "arithmetic-easy", "--num-generations", "2",
            "--prompts-per-step", "1", "--max-new-tokens", "4", "--zero-std-warn", "2", *FAST]
    align(*base, "--out", str(out), "--max-steps", "2", "--eval-every", "2",
          "--eval-prompts", "4", "--importance-sampling-level", "sequence")
    rows = metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "loss" not in rows[0] and "heldout/accuracy" not in rows[1]
    for r in (rows[0], rows[2]):
        assert r["heldout/n"] == 4
        k = round(r["heldout/accuracy"] * 4)
        assert (r["heldout/ci_low"], r["heldout/ci_high"]) == pytest.approx(wilson_interval(k, 4))
    assert rows[2]["heldout/gained"] + rows[2]["heldout/lost"] <= 4
    assert 0 < rows[2]["heldout/p_value"] <= 1
    assert summarize(out)["steps"] == 2  # `llmlab report` reads past the step-0 record
    r = align(*base, "--out", str(tmp_path / "x"), "--max-steps", "1", "--eval-prompts", "4",
              check=False)
    assert r.returncode != 0 and "eval_prompts" in r.stderr and "--eval-every" in r.stderr


def test_rollout_logprobs_are_the_sampling_distribution(tiny: Path) -> None:
    """Log-probs of a sampled completion, from logits / T (TRL's selective_log_softmax on the
    same tensors), equal the log-probs of the engine's sampling distribution at each step."""
    from trl.trainer.utils import selective_log_softmax

    import llmlab
    from llmlab.align.common import logprobs_from_logits, token_logprobs
    from llmlab.generate.engine import iter_decode, make_params

    lm = llmlab.load(str(tiny))
    T = 0.7
    prompt = lm.tokenizer.encode("What is 2 + 2?")
    params = make_params(lm.tokenizer, max_new_tokens=6, temperature=T, seed=3)
    toks, engine_lp = [], []
    with torch.no_grad():
        for step in iter_decode(lm.model, [prompt], params, return_logits=True):
            t = int(step.tokens[0])
            toks.append(t)
            engine_lp.append(torch.log_softmax(step.logits[0].float() / T, -1)[t])
        ids = torch.tensor([prompt + toks])
        ours = token_logprobs(lm.model, ids, temperature=T)[0, len(prompt) - 1:]
        logits = lm.model(ids).logits
        trl = selective_log_softmax(logits[:, :-1] / T, ids[:, 1:])
    assert torch.allclose(ours, torch.stack(engine_lp), atol=1e-4)
    assert torch.allclose(logprobs_from_logits(logits, ids, T), trl, atol=1e-5)


def test_grpo_rollout_old_logprobs_use_the_sampling_temperature(tiny: Path) -> None:
    import llmlab
    from llmlab.align.common import token_logprobs
    from llmlab.align.config import GRPOConfig
    from llmlab.align.data import task_prompts
    from llmlab.align.grpo import RolloutBatches
    from llmlab.generate.chat import template_for

    lm = llmlab.load(str(tiny))
    # Two passes per rollout: the old log-probs are taken at generation time.
    cfg = GRPOConfig(num_generations=2, prompts_per_step=2, max_new_tokens=6, temperature=0.5,
                     zero_std_warn=2.0, iterations=2)
    b = RolloutBatches(lm.model, lm.tokenizer, template_for(lm), task_prompts("arithmetic", 8),
                       cfg).next_batch()
    with torch.no_grad():
        at_t = token_logprobs(lm.model, b["ids"], b["attn"], 0.5)
        at_1 = token_logprobs(lm.model, b["ids"], b["attn"])
    m = b["cmask"].bool()
    assert b["cmask"].sum(1).min() >= 1 and b["cmask"].shape == at_t.shape
    assert torch.allclose(b["old"][m], at_t[m], atol=1e-5)
    assert not torch.allclose(b["old"][m], at_1[m], atol=1e-2)

    # One pass: no extra forward; the loss takes the current log-probs, detached, as old
    # (TRL's shortcut), which gives the same loss and gradient as the taken old log-probs.
    from llmlab.align.grpo import grpo_loss_fn

    one = RolloutBatches(lm.model, lm.tokenizer, template_for(lm),
                         task_prompts("arithmetic", 8),
                         GRPOConfig(num_generations=2, prompts_per_step=2, max_new_tokens=6,
                                    temperature=0.5, zero_std_warn=2.0)).next_batch()
    assert one["old"] is None
    fn = grpo_loss_fn(cfg)
    lm.model.eval()
    grads = []
    for old in (None, "taken"):
        if old == "taken":
            with torch.no_grad():
                one = {**one, "old": token_logprobs(lm.model, one["ids"], one["attn"], 0.5)}
        lm.model.zero_grad()
        loss, _ = fn(lm.model, one)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in lm.model.parameters()
                                      if p.grad is not None]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for g0, g1 in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(g0, g1, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("task,n,pairing", [("trivia-prefs", 8, "extremes"),
                                            ("arithmetic-prefs", 6, "extremes"),
                                            ("arithmetic-easy-prefs", 8, "length-matched"),
                                            ("arithmetic-easy-prefs", 8, "perturbed")])
def test_bundled_pref_tasks_rank_pairs_by_their_verifier(task: str, n: int, pairing: str,
                                                         tmp_path: Path) -> None:
    """SmolLM2 samples (half hinted with the answer) paired best vs worst: every row loads,
    its prompt is the task's plain prompt, and re-scoring both texts with the prompt's
    verifier gives chosen > rejected, with the rewards the row records."""
    import llmlab
    from llmlab.align.data import load_prefs, task_prefs, task_prompts
    from llmlab.tasks.verifiers import score_many

    lm = llmlab.load("smollm2-135m-instruct")
    pairs = task_prefs(lm, task, n, tmp_path, samples=2, hint=True, temperature=0.7,
                       pairing=pairing)
    assert pairs, "no pair: every sample scored the same"
    (cache,) = tmp_path.glob("*.jsonl")
    assert len(load_prefs(cache)) == len(pairs)
    rows = [json.loads(ln) for ln in cache.read_text().splitlines()]
    verifier = {p["prompt"]: p["verifier"] for p in task_prompts(task[:-6], n)}
    assert all(r["prompt"] in verifier and "Hint" not in r["prompt"] for r in rows)
    got = score_many([r["chosen"] for r in rows] + [r["rejected"] for r in rows],
                     [verifier[r["prompt"]] for r in rows] * 2)
    for r, c, w in zip(rows, got[:len(rows)], got[len(rows):], strict=True):
        assert r["chosen"].strip() and r["rejected"].strip()
        assert (c, w) == (r["chosen_reward"], r["rejected_reward"]) and c > w


def test_alignment_from_an_adapter_keeps_its_chat_template(tiny: Path, tmp_path: Path) -> None:
    """An SFT adapter trained with --chat-template: DPO/PPO/GRPO from it render prompts in
    that template and save it with the adapter they write."""
    import llmlab
    from llmlab.align.config import AlignConfig
    from llmlab.align.run import load_policy
    from llmlab.generate.chat import template_for
    from llmlab.peft.model import get_peft_model
    from llmlab.tokenizer.chat_template import TEMPLATES

    zephyr = TEMPLATES["zephyr"]
    pm = get_peft_model(llmlab.load(str(tiny)).model, "lora", r=2, target_modules=["q_proj"])
    pm.save_adapter(tmp_path / "sft", chat_template=zephyr.to_jinja())
    lm, model, export = load_policy(AlignConfig(model=str(tiny), adapter=str(tmp_path / "sft")))
    assert template_for(lm) == zephyr
    export(model, tmp_path / "out")
    assert (tmp_path / "out" / "chat_template.jinja").read_text() == zephyr.to_jinja()
    lm, model, _ = load_policy(AlignConfig(model=str(tiny)))  # no adapter: the base's ChatML
    assert template_for(lm).turn_start == TEMPLATES["chatml"].turn_start
