"""Alignment losses on fixed tensors, against the formulas written out here independently
(plain Python loops and math; TRL's definitions / the papers)."""

from __future__ import annotations

import math

import pytest
import torch

from llmlab.align.common import masked_whiten
from llmlab.align.dpo import dpo_loss
from llmlab.align.grpo import group_advantages, grpo_loss
from llmlab.align.ppo import gae, kl_per_token, ppo_loss, token_rewards
from llmlab.align.reward import reward_loss


def lsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def close(a: torch.Tensor | float, b: float, tol: float = 1e-5) -> None:
    assert abs(float(a) - b) < tol, (float(a), b)


# ---------------------------------------------------------------- reward model (Bradley-Terry)

def test_reward_bt_margin_centering() -> None:
    rc, rr, mg = [1.5, -0.2, 0.3], [0.5, 0.4, 0.3], [0.5, 0.0, 1.0]
    want = sum(-lsig(c - r - m) for c, r, m in zip(rc, rr, mg, strict=True)) / 3
    want += 0.01 * sum((c + r) ** 2 for c, r in zip(rc, rr, strict=True)) / 3
    loss, met = reward_loss(torch.tensor(rc), torch.tensor(rr), torch.tensor(mg), 0.01)
    close(loss, want)
    close(met["accuracy"], 1 / 3)
    plain, _ = reward_loss(torch.tensor(rc), torch.tensor(rr))
    close(plain, sum(-lsig(c - r) for c, r in zip(rc, rr, strict=True)) / 3)


# ---------------------------------------------------------------- DPO family

PC, PR, RC, RR = [-10.0, -7.0], [-12.0, -6.0], [-11.0, -7.5], [-11.5, -6.5]


@pytest.mark.parametrize("kind", ["sigmoid", "ipo", "hinge"])
def test_dpo_losses(kind: str) -> None:
    beta = 0.1
    logits = [(pc - pr) - (rc - rr) for pc, pr, rc, rr in zip(PC, PR, RC, RR, strict=True)]
    if kind == "sigmoid":
        want = [-lsig(beta * z) for z in logits]
    elif kind == "ipo":
        want = [(z - 1 / (2 * beta)) ** 2 for z in logits]
    else:
        want = [max(0.0, 1 - beta * z) for z in logits]
    t = [torch.tensor(v) for v in (PC, PR, RC, RR)]
    loss, m = dpo_loss(*t, beta=beta, loss_type=kind)
    close(loss, sum(want) / 2)
    # implicit rewards β(logπ - logπ_ref): chosen [0.1, 0.05], rejected [-0.05, 0.05]
    close(m["rewards/chosen"], 0.075)
    close(m["rewards/rejected"], 0.0)
    close(m["rewards/margin"], 0.075)
    close(m["rewards/accuracy"], 0.5)


def test_dpo_label_smoothing_and_bad_type() -> None:
    t = [torch.tensor(v) for v in (PC, PR, RC, RR)]
    z = [1.5, 0.0]  # the logits of PC, PR, RC, RR
    want = sum(-0.9 * lsig(0.5 * x) - 0.1 * lsig(-0.5 * x) for x in z) / 2
    close(dpo_loss(*t, beta=0.5, label_smoothing=0.1)[0], want)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(*t, loss_type="nope")


# ---------------------------------------------------------------- PPO

def test_kl_estimators() -> None:
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    close(kl_per_token(lp, ref, "k1")[0], 0.5)
    r = math.exp(-1.0 - (-2.0))  # π_ref/π at token 2
    close(kl_per_token(lp, ref, "k3")[1], r - 1 - math.log(r))


def test_token_rewards_score_at_last_token() -> None:
    lp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    r, _ = token_rewards(torch.tensor([3.0, -1.0]), lp, ref, mask, 0.1, "k1")
    want = [[-0.05, 0.0, 3.0 + 0.05], [0.0, -1.0 + 0.1, 0.0]]  # k1 = lp - ref
    for i in range(2):
        for t in range(3):
            close(r[i, t], want[i][t])


def test_gae_against_loop() -> None:
    rew = [[0.1, -0.2, 1.0], [0.5, 0.3, 9.0]]
    val = [[0.2, 0.4, 0.6], [-0.1, 0.2, 7.0]]
    mask = [[1, 1, 1], [1, 1, 0]]
    g, lam = 0.9, 0.8
    adv, ret = gae(torch.tensor(rew), torch.tensor(val), torch.tensor(mask), g, lam)
    for i in range(2):
        n = sum(mask[i])
        for t in range(n):  # A_t = Σ_l (γλ)^l δ_{t+l}, V beyond the end = 0
            a = 0.0
            for k in range(t, n):
                vnext = val[i][k + 1] if k + 1 < n else 0.0
                a += (g * lam) ** (k - t) * (rew[i][k] + g * vnext - val[i][k])
            close(adv[i, t], a)
            close(ret[i, t], a + val[i][t])


def test_whiten() -> None:
    x, m = [1.0, 2.0, 4.0, 100.0], [1, 1, 1, 0]
    mu = 7 / 3
    sd = math.sqrt(sum((v - mu) ** 2 for v in x[:3]) / 2)  # unbiased, as TRL
    w = masked_whiten(torch.tensor(x), torch.tensor(m))
    close(w[0], (1 - mu) / sd, 1e-4)
    close(masked_whiten(torch.tensor(x), torch.tensor(m), shift_mean=False)[2],
          (4 - mu) / sd + mu, 1e-4)


def test_ppo_clipped_losses() -> None:
    lp, old = [-0.5, -1.0, -2.0], [-1.0, -1.0, -1.0]
    adv, v, ov, ret = [1.0, -1.0, 2.0], [0.5, 0.0, 1.0], [0.0, 0.1, 0.5], [1.0, 0.0, 0.0]
    mask = [1, 1, 1]
    pg, vf = [], []
    for i in range(3):
        ratio = math.exp(lp[i] - old[i])
        pg.append(max(-adv[i] * ratio, -adv[i] * min(max(ratio, 0.8), 1.2)))
        vc = ov[i] + min(max(v[i] - ov[i], -0.2), 0.2)
        vf.append(max((v[i] - ret[i]) ** 2, (vc - ret[i]) ** 2))
    want = sum(pg) / 3 + 0.1 * 0.5 * sum(vf) / 3
    t = [torch.tensor(x) for x in (lp, old, adv, v, ov, ret, mask)]
    loss, m = ppo_loss(*t, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    close(loss, want)
    close(m["clipfrac"], 1 / 3)  # only token 0 (ratio e^0.5 > 1.2, A > 0) is clipped


# ---------------------------------------------------------------- GRPO

def test_group_advantages_scalings() -> None:
    r = [1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    rt = torch.tensor(r)

    def std(xs: list[float]) -> float:
        mu = sum(xs) / len(xs)
        return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1))

    a, s = group_advantages(rt, 4, "group")
    close(a[0], 0.5 / (std(r[:4]) + 1e-4))
    close(a[5], 0.0)
    close(s[1], 0.0)
    close(group_advantages(rt, 4, "batch")[0][1], -0.5 / (std(r) + 1e-4))
    close(group_advantages(rt, 4, "none")[0][0], 0.5)


LP = [[-1.0, -0.5, -2.0], [-0.3, -0.2, 0.0]]
OLD = [[-1.2, -0.5, -1.0], [-0.1, -0.9, 0.0]]
REF = [[-1.1, -0.7, -1.5], [-0.2, -0.4, 0.0]]
MASK = [[1, 1, 1], [1, 1, 0]]
ADV = [1.0, -0.5]


def per_token(beta: float, el: float, eh: float) -> list[list[float]]:
    out = []
    for i in range(2):
        row = []
        for t in range(3):
            ratio = math.exp(LP[i][t] - OLD[i][t])
            a = ADV[i]
            x = -min(ratio * a, min(max(ratio, 1 - el), 1 + eh) * a)
            d = REF[i][t] - LP[i][t]
            row.append(x + beta * (math.exp(d) - d - 1))
        out.append(row)
    return out


@pytest.mark.parametrize("agg", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_aggregations(agg: str) -> None:
    beta, el, eh = 0.04, 0.2, 0.28
    pt = per_token(beta, el, eh)
    rows = [sum(pt[i][t] for t in range(3) if MASK[i][t]) for i in range(2)]
    lens = [sum(m) for m in MASK]
    want = {"grpo": (rows[0] / lens[0] + rows[1] / lens[1]) / 2,
            "bnpo": sum(rows) / sum(lens),
            "dr_grpo": sum(rows) / (2 * 8),
            "dapo": sum(rows) / 20}[agg]
    t = {k: torch.tensor(v) for k, v in
         dict(logp=LP, old_logp=OLD, ref_logp=REF, mask=MASK, advantages=ADV).items()}
    loss, m = grpo_loss(**t, beta=beta, eps_low=el, eps_high=eh, loss_type=agg,
                        max_completion_length=8, num_items=20 if agg == "dapo" else None)
    close(loss, want)
    # clipped tokens: row 0 t=2 ratio e^-1 (A>0: not counted: min keeps ratio·A);
    # row 1 t=1 ratio e^0.7 > 1.28 with A<0 -> not "high"; row 1 t=0 ratio e^-0.2 = 0.82 -> none
    close(m["clip_ratio"], 0.0)


def test_grpo_clip_ratio_counts() -> None:
    lp = torch.tensor([[0.5, 0.0], [-0.5, 0.0]])
    old = torch.zeros(2, 2)
    loss, m = grpo_loss(lp, old, torch.tensor([1.0, -1.0]), torch.ones(2, 2),
                        eps_low=0.2, eps_high=0.28)
    close(m["clip_ratio/high"], 0.25)  # e^0.5 = 1.65 > 1.28 with A > 0
    close(m["clip_ratio/low"], 0.25)  # e^-0.5 = 0.61 < 0.8 with A < 0
    # clipped tokens give no gradient: d loss / d logp there is 0
    lp.requires_grad_(True)
    grpo_loss(lp, old, torch.tensor([1.0, -1.0]), torch.ones(2, 2))[0].backward()
    assert lp.grad is not None
    assert lp.grad[0, 0] == 0 and lp.grad[1, 0] == 0 and lp.grad[0, 1] != 0
