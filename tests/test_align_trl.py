"""Our alignment losses against TRL 1.16's own trainer code on the same weights.

TRL's loss methods (`DPOTrainer._compute_loss`, `GRPOTrainer._compute_loss`,
`RewardTrainer.compute_loss`) are called unbound on a stand-in `self` that holds only the
settings they read, with the tiny model exported to transformers and TRL's own fused LM head
(`add_fused_lm_head`) computing the per-token log-probs. Ours run on our Transformer. So each
test compares the whole path: completion masking, sequence log-probs, temperature, clipping,
KL and aggregation. PPO has no counterpart: TRL 1.16 removed PPOTrainer, so the PPO pieces
keep their formula tests (test_align_losses.py).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers
from grpo_refs import trl_advantages
from peft_common import export_hf, tiny_model
from trl import DPOTrainer, GRPOTrainer, RewardTrainer
from trl.trainer.utils import add_fused_lm_head

from llmlab.align.config import GRPOConfig
from llmlab.align.dpo import DPOLoss
from llmlab.align.grpo import grpo_loss_fn
from llmlab.align.reward import ScalarHead, reward_batch_loss

FUSED = ("log_probs", "entropy", "mean_logits", "is_top1")


class Accelerator:
    """What TRL's loss code asks of accelerate, for one process."""

    device = torch.device("cpu")
    num_processes = 1
    sync_gradients = True
    is_main_process = True

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return x

    gather_for_metrics = gather

    def reduce(self, x: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return x

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


class TrainingModel(torch.nn.Module):
    """`self.model` as TRL's loss code reads it: in training mode, no checkpointing."""

    is_gradient_checkpointing = False


def trainer_self(**settings: object) -> SimpleNamespace:
    return SimpleNamespace(model=TrainingModel(), accelerator=Accelerator(),
                           aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
                           _total_train_tokens=0, _tp_size=1, **settings)


def hf(model: torch.nn.Module, d: Path, temperature: float = 1.0):  # noqa: ANN201
    m = transformers.AutoModelForCausalLM.from_pretrained(export_hf(model, d)).eval()
    add_fused_lm_head(m, temperature=temperature, outputs=FUSED)
    return m


def lengths_to_mask(lengths: list[int], T: int) -> torch.Tensor:
    return (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()


# ---------------------------------------------------------------- DPO


@pytest.fixture(scope="module")
def dpo_setup(tmp_path_factory):  # noqa: ANN201
    d = tmp_path_factory.mktemp("dpo")
    pol, ref = tiny_model(0), tiny_model(1)
    g = torch.Generator().manual_seed(0)
    B, T, P = 3, 12, 4  # pairs, padded length, prompt length
    ids = torch.randint(3, 90, (2 * B, T), generator=g)
    ids[B:, :P] = ids[:B, :P]  # a pair shares its prompt
    attn = lengths_to_mask([12, 9, 7, 10, 12, 6], T)
    ids = ids * attn  # right padding with id 0
    cmask = attn.clone()
    cmask[:, :P] = 0
    ours = {"chosen_ids": ids[:B], "chosen_mask": attn[:B], "chosen_cmask": cmask[:B],
            "rejected_ids": ids[B:], "rejected_mask": attn[B:], "rejected_cmask": cmask[B:]}
    theirs = {"input_ids": ids, "attention_mask": attn, "completion_mask": cmask}
    return pol, ref, hf(pol, d / "pol"), hf(ref, d / "ref"), ours, theirs


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_matches_trl(dpo_setup, loss_type: str) -> None:
    pol, ref, hf_pol, hf_ref, ours_batch, theirs_batch = dpo_setup
    beta = 0.3
    loss, m = DPOLoss(ref, beta, loss_type)(pol, ours_batch)
    me = trainer_self(ref_model=hf_ref, ld_alpha=None, precompute_ref_logps=False,
                      f_divergence_type="reverse_kl", loss_types=[loss_type],
                      loss_weights=[1.0], beta=beta, label_smoothing=0.0, use_weighting=False,
                      args=SimpleNamespace(gradient_checkpointing_kwargs=None))
    want = DPOTrainer._compute_loss(me, hf_pol, dict(theirs_batch), False)
    assert abs(float(loss) - float(want)) < 1e-5, (float(loss), float(want))
    got = me._metrics["train"]
    for ours_key, trl_key in (("rewards/chosen", "rewards/chosen"),
                              ("rewards/rejected", "rewards/rejected"),
                              ("rewards/margin", "rewards/margins"),
                              ("rewards/accuracy", "rewards/accuracies")):
        assert abs(m[ours_key] - got[trl_key][0]) < 1e-5, ours_key
    assert float(want) > 0 and abs(m["rewards/margin"]) > 1e-3  # the models do differ


# ---------------------------------------------------------------- GRPO


@pytest.fixture(scope="module")
def grpo_setup(tmp_path_factory):  # noqa: ANN201
    """4 completions of equal-length prompts (so [prompt | right-padded completion] is both
    TRL's layout and ours), old and reference log-probs a fixed perturbation of the current."""
    d = tmp_path_factory.mktemp("grpo")
    temperature = 0.7
    pol = tiny_model(0)
    g = torch.Generator().manual_seed(1)
    B, P, C = 4, 5, 8
    prompt = torch.randint(3, 90, (B, P), generator=g)
    cmask = lengths_to_mask([8, 3, 6, 1], C)
    comp = torch.randint(3, 90, (B, C), generator=g) * cmask
    ids, attn = torch.cat([prompt, comp], 1), torch.cat([torch.ones_like(prompt), cmask], 1)
    with torch.no_grad():
        lp = torch.log_softmax(pol(ids, attention_mask=attn).logits[:, :-1] / temperature, -1)
        cur = lp.gather(2, ids[:, 1:, None]).squeeze(2)
    old = cur + 0.4 * torch.randn(cur.shape, generator=g)  # ratios beyond 1 ± ε
    ref = cur + 0.3 * torch.randn(cur.shape, generator=g)
    adv = torch.tensor([1.0, -0.5, 0.8, -1.2])
    ours = {"ids": ids, "attn": attn, "cmask": torch.cat([torch.zeros(B, P - 1).long(), cmask],
                                                         1), "old": old, "ref": ref, "adv": adv}
    theirs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt),
              "completion_ids": comp, "completion_mask": cmask, "advantages": adv,
              "old_per_token_logps": old[:, P - 1:], "ref_per_token_logps": ref[:, P - 1:],
              "num_items_in_batch": cmask.sum()}
    return pol, hf(pol, d / "pol", temperature), ours, theirs, temperature


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_loss_matches_trl(grpo_setup, loss_type: str, level: str) -> None:
    """Token-level GRPO and GSPO's sequence-level ratio (importance_sampling_level)."""
    pol, hf_pol, ours_batch, theirs_batch, temperature = grpo_setup
    cfg = GRPOConfig(loss_type=loss_type, epsilon=0.2, epsilon_high=0.28, beta=0.04,
                     max_new_tokens=8, temperature=temperature, importance_sampling_level=level)
    loss, m = grpo_loss_fn(cfg)(pol, {**ours_batch, "stats": {}})
    me = trainer_self(
        loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28, beta=0.04,
        max_completion_length=8, temperature=temperature, top_entropy_quantile=1.0,
        off_policy_mask_threshold=None, importance_sampling_level=level, use_vllm=False,
        vllm_importance_sampling_correction=False, _entropy_bonus_enabled=False,
        current_gradient_accumulation_steps=1,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1))
    me._get_per_token_logps_and_entropies = (
        lambda *a, **kw: GRPOTrainer._get_per_token_logps_and_entropies(me, *a, **kw))
    want = GRPOTrainer._compute_loss(me, hf_pol, dict(theirs_batch))
    assert abs(float(loss) - float(want)) < 1e-5, (float(loss), float(want))
    got = me._metrics["train"]
    assert abs(m["kl"] - got["kl"][0]) < 1e-5
    assert abs(m["clip_ratio/low"] - got["clip_ratio/low_mean"][0]) < 1e-6
    assert abs(m["clip_ratio/high"] - got["clip_ratio/high_mean"][0]) < 1e-6
    assert abs(m["clip_ratio"] - got["clip_ratio/region_mean"][0]) < 1e-6
    # the clipping branch is exercised, not only the ratio (per sequence: 1 of 4 is clipped)
    assert 0 < m["clip_ratio"] < 1, m


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_trl(scale: str) -> None:
    """The RL page's advantages (rl_view.advantages -> group_advantages) are TRL's, run from
    TRL's own lines, for three groups of 4: mixed, all equal (no signal), fractional."""
    from llmlab.align.rl_view import advantages

    rewards = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 1.0, 0.25, 0.0, 0.75]
    got = advantages(rewards, 4, scale)["advantages"]
    assert got == pytest.approx(trl_advantages(rewards, 4, scale), abs=1e-6)
    assert got[4:8] == [0.0] * 4  # a group of ties gives no signal under every scaling


# ---------------------------------------------------------------- reward model


@pytest.mark.parametrize("center", [0.0, 0.01])
def test_reward_loss_matches_trl_reward_trainer(tmp_path: Path, center: float) -> None:
    """Bradley-Terry with margin (and centring) on a transformers sequence classifier,
    which reads the last non-pad token: our ScalarHead with the same weights."""
    PAD = 95
    base = tiny_model(0)
    torch.manual_seed(0)
    seq = transformers.LlamaForSequenceClassification.from_pretrained(
        export_hf(base, tmp_path / "hf"), num_labels=1, pad_token_id=PAD).eval()
    rm = ScalarHead(base)
    with torch.no_grad():
        rm.head.weight.copy_(seq.score.weight)
    g = torch.Generator().manual_seed(2)
    B, T = 3, 10
    attn = lengths_to_mask([10, 6, 8, 9, 10, 4], T)
    ids = torch.where(attn.bool(), torch.randint(3, 90, (2 * B, T), generator=g), PAD)
    margin = torch.tensor([0.5, 0.0, 1.0])
    batch = {"chosen_ids": ids[:B], "chosen_mask": attn[:B], "rejected_ids": ids[B:],
             "rejected_mask": attn[B:], "margin": margin}
    loss, m = reward_batch_loss(rm, batch, center)
    me = trainer_self(args=SimpleNamespace(center_rewards_coefficient=center or None))
    want = RewardTrainer.compute_loss(me, seq, {"input_ids": ids, "attention_mask": attn,
                                                "margin": margin})
    assert abs(float(loss) - float(want)) < 1e-5, (float(loss), float(want))
    assert abs(m["accuracy"] - me._metrics["train"]["accuracy"][0]) < 1e-6
    assert abs(m["rewards/margin"] - me._metrics["train"]["margin"][0]) < 1e-5
