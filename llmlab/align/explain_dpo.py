"""The DPO page's numbers for one preference pair, from the code DPO trains with.

Each completion token's log π − log π_ref comes from `dpo.pair_token_logprobs`, the per-token
log-probs `DPOLoss` sums, so the tokens of a side add up to the sequence log-ratio the loss
uses. The implicit rewards β·(log π − log π_ref) and the sigmoid / IPO / hinge losses come
from `dpo.dpo_loss` itself, at any β.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llmlab.align.common import Reference
from llmlab.align.data import pref_tensors
from llmlab.align.dpo import LOSS_TYPES, completion_sum, dpo_loss, pair_token_logprobs

SIDES = ("chosen", "rejected")
# β from 0.01 to 10 on a log scale: the page's loss-against-β curves.
BETA_GRID = [round(10 ** (-2 + 3 * i / 60), 6) for i in range(61)]


def pair_batch(tok: Any, template: Any, prompt: str, chosen: str, rejected: str,
               seq_len: int = 256) -> dict[str, torch.Tensor]:
    """One pair as `llmlab dpo` tensorises it (chat prompt, completions ending in the
    end-of-turn token, completion masks)."""
    return pref_tensors(tok, template, [{"prompt": prompt, "chosen": chosen,
                                         "rejected": rejected}], seq_len)


@torch.no_grad()
def pair_logratios(policy: nn.Module, ref: nn.Module | None, batch: dict[str, torch.Tensor]
                   ) -> dict[str, dict[str, Any]]:
    """Per side: the completion tokens' ids, log π, log π_ref and log-ratio, and the sums
    (`completion_sum`, as the loss takes them). `ref` None: π_ref is `policy` with its
    adapters disabled (`common.Reference`), as in training."""
    if batch["chosen_ids"].shape[0] != 1:
        raise ValueError(f"batch: one pair expected, got {batch['chosen_ids'].shape[0]}")
    pol, rf, cm = pair_token_logprobs(policy, Reference(ref), batch)
    sum_pol, sum_ref = completion_sum(pol, cm), completion_sum(rf, cm)
    out: dict[str, dict[str, Any]] = {}
    for i, side in enumerate(SIDES):
        ids = batch[f"{side}_ids"][0]
        pos = [j for j in range(1, ids.shape[0]) if cm[i, j]]  # token j is scored at j - 1
        lp, lr = pol[i, [j - 1 for j in pos]], rf[i, [j - 1 for j in pos]]
        out[side] = {"ids": [int(ids[j]) for j in pos], "logp": lp.tolist(),
                     "logp_ref": lr.tolist(), "logratio": (lp - lr).tolist(),
                     "seq_logp": float(sum_pol[i]), "seq_logp_ref": float(sum_ref[i]),
                     "seq_logratio": float(sum_pol[i] - sum_ref[i]), "n_tokens": len(pos)}
    return out


def dpo_losses(logp_c: float, logp_r: float, ref_c: float, ref_r: float, len_c: int,
               len_r: int, beta: float, label_smoothing: float = 0.0) -> dict[str, Any]:
    """`dpo_loss` for every loss type on one pair's sequence log-probs (float32, as in
    training): the loss and the rewards/* metrics at `beta`, and each loss over BETA_GRID."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if len_c < 1 or len_r < 1:
        raise ValueError(f"len_c: both completions need a token, got {len_c} and {len_r}")
    t = [torch.tensor([float(v)]) for v in (logp_c, logp_r, ref_c, ref_r)]
    lens = torch.tensor([float(len_c)]), torch.tensor([float(len_r)])

    def at(b: float, kind: str) -> tuple[float, dict[str, float]]:
        loss, m = dpo_loss(*t, beta=b, loss_type=kind, label_smoothing=label_smoothing,
                           len_c=lens[0], len_r=lens[1])
        return float(loss), m

    losses = {}
    for k in LOSS_TYPES:
        loss, m = at(beta, k)
        losses[k] = {"loss": loss, **m}
    return {"beta": beta, "label_smoothing": label_smoothing,
            # the sequence logit z = (log π_c − log π_r) − (log π_ref,c − log π_ref,r)
            "logits": float((t[0] - t[1]) - (t[2] - t[3])),
            # IPO's, each side's log-ratio divided by its length (as TRL)
            "ipo_logits": float((t[0] - t[2]) / lens[0] - (t[1] - t[3]) / lens[1]),
            "losses": losses,
            "curve": {"beta": BETA_GRID,
                      **{k: [at(b, k)[0] for b in BETA_GRID] for k in LOSS_TYPES}}}


def explain_pair(policy: nn.Module, ref: nn.Module | None, tok: Any, template: Any,
                 prompt: str, chosen: str, rejected: str, beta: float = 0.1,
                 seq_len: int = 256) -> dict[str, Any]:
    """The page's view of one pair: per-token log-ratios with their text pieces, and the
    losses at `beta` (`dpo_losses`)."""
    for name, text in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise ValueError(f"{name}: must be a non-empty string")
    batch = pair_batch(tok, template, prompt, chosen, rejected, seq_len)
    sides = pair_logratios(policy, ref, batch)
    for s in sides.values():
        s["pieces"] = tok.pieces(s["ids"])
    c, r = sides["chosen"], sides["rejected"]
    return {"chosen": c, "rejected": r,
            **dpo_losses(c["seq_logp"], r["seq_logp"], c["seq_logp_ref"], r["seq_logp_ref"],
                         c["n_tokens"], r["n_tokens"], beta)}
