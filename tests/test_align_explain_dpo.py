"""The DPO page's library (align/explain_dpo.py, align/heldout.py) against outside references:
TRL 1.16's `DPOTrainer._compute_loss` on the same weights (the harness of test_align_trl.py),
the loss our trainer runs, and hand-written formulas for the β curve."""

from __future__ import annotations

import math

import pytest
import torch
from peft_common import randomize, tiny_model
from test_align_trl import hf, lengths_to_mask, trainer_self
from trl import DPOTrainer

from llmlab.align.dpo import DPOLoss
from llmlab.align.explain_dpo import BETA_GRID, dpo_losses, pair_logratios
from llmlab.peft.model import get_peft_model

P = 4  # prompt length


def one_pair(g: torch.Generator, lc: int, lr: int, T: int = 12) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 90, (2, T), generator=g)
    ids[1, :P] = ids[0, :P]  # a pair shares its prompt
    attn = lengths_to_mask([lc, lr], T)
    ids = ids * attn
    cm = attn.clone()
    cm[:, :P] = 0
    return {"chosen_ids": ids[:1], "chosen_mask": attn[:1], "chosen_cmask": cm[:1],
            "rejected_ids": ids[1:], "rejected_mask": attn[1:], "rejected_cmask": cm[1:]}


def trl_batch(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.cat([b["chosen_ids"], b["rejected_ids"]]),
            "attention_mask": torch.cat([b["chosen_mask"], b["rejected_mask"]]),
            "completion_mask": torch.cat([b["chosen_cmask"], b["rejected_cmask"]])}


@pytest.fixture(scope="module")
def models(tmp_path_factory):  # noqa: ANN201
    d = tmp_path_factory.mktemp("xdpo")
    pol, ref = tiny_model(0), tiny_model(1)
    return pol, ref, hf(pol, d / "pol"), hf(ref, d / "ref")


@pytest.mark.parametrize("lengths", [(12, 9), (7, 12)])
def test_page_losses_match_trl_and_tokens_sum_to_the_loss_logratio(models, lengths) -> None:
    pol, ref, hf_pol, hf_ref = models
    b = one_pair(torch.Generator().manual_seed(sum(lengths)), *lengths)
    sides = pair_logratios(pol, ref, b)
    c, r = sides["chosen"], sides["rejected"]
    # The per-token log-ratios add up to the sequence log-ratio the training loss uses.
    with torch.no_grad():
        seq_pol, seq_ref = DPOLoss(ref)._logps(pol, b)
    for i, s in enumerate((c, r)):
        assert s["n_tokens"] == lengths[i] - P == len(s["logratio"])
        assert sum(s["logratio"]) == pytest.approx(float(seq_pol[i] - seq_ref[i]), abs=1e-4)
        assert s["seq_logratio"] == pytest.approx(float(seq_pol[i] - seq_ref[i]), abs=1e-6)
    for beta in (0.05, 0.3, 2.0):
        got = dpo_losses(c["seq_logp"], r["seq_logp"], c["seq_logp_ref"], r["seq_logp_ref"],
                         c["n_tokens"], r["n_tokens"], beta)
        for kind in ("sigmoid", "ipo", "hinge"):
            me = trainer_self(ref_model=hf_ref, ld_alpha=None, precompute_ref_logps=False,
                              f_divergence_type="reverse_kl", loss_types=[kind],
                              loss_weights=[1.0], beta=beta, label_smoothing=0.0,
                              use_weighting=False, args=type("A", (), {
                                  "gradient_checkpointing_kwargs": None})())
            want = DPOTrainer._compute_loss(me, hf_pol, trl_batch(b), False)
            shown = got["losses"][kind]
            # float32 sums: an IPO loss near 100 (small β) agrees to ~1e-7 relative
            want = float(want.detach())
            assert shown["loss"] == pytest.approx(want, rel=1e-6, abs=1e-5), (kind, beta)
            m = me._metrics["train"]
            assert shown["rewards/chosen"] == pytest.approx(m["rewards/chosen"][0], abs=1e-5)
            assert shown["rewards/rejected"] == pytest.approx(m["rewards/rejected"][0],
                                                              abs=1e-5)
            assert shown["rewards/margin"] == pytest.approx(m["rewards/margins"][0], abs=1e-5)
            # and what our trainer's loss gives on the batch
            ours, _ = DPOLoss(ref, beta, kind)(pol, b)
            assert shown["loss"] == pytest.approx(float(ours), rel=1e-6, abs=1e-5)


def test_reference_is_the_policy_with_adapters_disabled() -> None:
    base = tiny_model(0)
    b = one_pair(torch.Generator().manual_seed(3), 12, 10)
    pm = get_peft_model(base, "lora", r=4, target_modules=["q_proj", "v_proj"])
    zero = pair_logratios(pm, None, b)  # B = 0: the policy is its base, every ratio 0
    assert all(abs(x) < 1e-6 for s in zero.values() for x in s["logratio"])
    randomize(pm)
    sides = pair_logratios(pm, None, b)
    with torch.no_grad():
        seq_pol, seq_ref = DPOLoss(None)._logps(pm, b)
    assert sides["chosen"]["seq_logratio"] == pytest.approx(float(seq_pol[0] - seq_ref[0]),
                                                            abs=1e-6)
    assert max(abs(x) for x in sides["chosen"]["logratio"]) > 1e-3
    with pm.disable_adapters():
        plain = tiny_model(0)
        assert sides["chosen"]["logp_ref"] == pytest.approx(
            pair_logratios(plain, plain, b)["chosen"]["logp"], abs=1e-5)


def test_beta_curve_against_the_formulas() -> None:
    pc, pr, rc, rr, lc, lr = -10.0, -12.0, -11.0, -11.5, 5, 8
    got = dpo_losses(pc, pr, rc, rr, lc, lr, 0.1)
    z = (pc - pr) - (rc - rr)
    zi = (pc - rc) / lc - (pr - rr) / lr
    assert got["logits"] == pytest.approx(z) and got["ipo_logits"] == pytest.approx(zi)
    for i in (0, 20, 60):
        b = BETA_GRID[i]
        assert got["curve"]["sigmoid"][i] == pytest.approx(math.log1p(math.exp(-b * z)),
                                                           rel=1e-5)
        assert got["curve"]["ipo"][i] == pytest.approx((zi - 1 / (2 * b)) ** 2, rel=1e-5)
        assert got["curve"]["hinge"][i] == pytest.approx(max(0.0, 1 - b * z), abs=1e-5)
    assert got["losses"]["sigmoid"]["rewards/chosen"] == pytest.approx(0.1 * (pc - rc))
    with pytest.raises(ValueError, match="beta"):
        dpo_losses(pc, pr, rc, rr, lc, lr, 0.0)
    with pytest.raises(ValueError, match="len_c"):
        dpo_losses(pc, pr, rc, rr, 0, lr, 0.1)


def test_heldout_prompts_are_the_tasks_test_split() -> None:
    from llmlab.align.data import task_prompts
    from llmlab.align.heldout import heldout_fn, heldout_prompts
    from llmlab.tasks import TASKS

    got = heldout_prompts("arithmetic-easy-prefs", 5)
    want = TASKS["arithmetic-easy"].examples("test", 5)
    assert [p["verifier"]["answer"] for p in got] == [e.target for e in want]
    assert not {p["prompt"] for p in got} & {p["prompt"] for p in
                                             task_prompts("arithmetic-easy", 400)}
    assert heldout_prompts("arithmetic-easy-prefs", 0) == []
    assert heldout_fn("", 8, None, None) is None  # a preference file: no verifier
