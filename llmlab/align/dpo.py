"""Direct Preference Optimisation (Rafailov et al. 2023) and its IPO / hinge variants.

With π the policy, π_ref the frozen reference, and log-probs summed over completion tokens only:
    logits = (log π(y_c) - log π(y_r)) - (log π_ref(y_c) - log π_ref(y_r))
    sigmoid: -log σ(β·logits)  (label smoothing ε: (1-ε)·that + ε·(-log σ(-β·logits)))
    ipo:     (logits - 1/(2β))²   (Azar et al. 2023 eq. 17; as TRL, each side's log-ratio is
             divided by its completion length, so β means the same at any length)
    hinge:   relu(1 - β·logits)   (SLiC, Zhao et al. 2023)
Implicit rewards β·(log π - log π_ref) are logged as rewards/chosen, rewards/rejected.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.align.common import Reference, token_logprobs

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def dpo_loss(pol_c: torch.Tensor, pol_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor,
             beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             len_c: torch.Tensor | None = None, len_r: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean loss over pairs of summed sequence log-probs (B,), and the rewards/* metrics.
    len_c / len_r: completion lengths, which IPO divides each log-ratio by."""
    logits = (pol_c - pol_r) - (ref_c - ref_r)
    if loss_type == "sigmoid":
        losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                  - F.logsigmoid(-beta * logits) * label_smoothing)
    elif loss_type == "ipo":
        if len_c is not None and len_r is not None:
            logits = (pol_c - ref_c) / len_c.clamp(min=1) - (pol_r - ref_r) / len_r.clamp(min=1)
        losses = (logits - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    else:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    rc = beta * (pol_c - ref_c).detach()
    rr = beta * (pol_r - ref_r).detach()
    return losses.mean(), {"rewards/chosen": float(rc.mean()),
                           "rewards/rejected": float(rr.mean()),
                           "rewards/margin": float((rc - rr).mean()),
                           "rewards/accuracy": float((rc > rr).float().mean())}


def completion_sum(lp: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum of per-token log-probs (B, T-1) over completion tokens only; completion_mask is
    (B, T) over the ids."""
    return (lp * completion_mask[:, 1:].to(lp.dtype)).sum(1)


def pair_token_logprobs(model: nn.Module, ref: Reference, b: dict[str, torch.Tensor]
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log π and log π_ref (2B, T-1) of [chosen; rejected] in one forward each,
    and their completion mask (2B, T): what the loss sums, and what the DPO page colours."""
    ids, attn, cm = (torch.cat([b[f"chosen_{k}"], b[f"rejected_{k}"]])
                     for k in ("ids", "mask", "cmask"))
    return token_logprobs(model, ids, attn), ref.logprobs(ids, attn, policy=model), cm


def sequence_logprob(model: nn.Module, ids: torch.Tensor, attn: torch.Tensor,
                     completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p over completion tokens only; completion_mask is (B, T) over ids."""
    return completion_sum(token_logprobs(model, ids, attn), completion_mask)


class DPOLoss:
    """loss_fn(model, batch) for the shared loop. `ref` is a frozen model, or None to use the
    policy with its LoRA adapters disabled. Batch: {chosen,rejected}_{ids,mask,cmask}."""

    def __init__(self, ref: nn.Module | None, beta: float = 0.1, loss_type: str = "sigmoid",
                 label_smoothing: float = 0.0) -> None:
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.ref = Reference(ref)
        self.beta, self.loss_type, self.ls = beta, loss_type, label_smoothing

    def _logps(self, model: nn.Module, b: dict[str, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs of [chosen; rejected] under the policy and π_ref."""
        pol, ref, cm = pair_token_logprobs(model, self.ref, b)
        return completion_sum(pol, cm), completion_sum(ref, cm)

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        n = batch["chosen_ids"].shape[0]
        pol, ref = self._logps(model, batch)
        lens = (batch["chosen_cmask"].sum(1), batch["rejected_cmask"].sum(1))
        loss, m = dpo_loss(pol[:n], pol[n:], ref[:n], ref[n:], self.beta, self.loss_type,
                           self.ls, *lens)
        tokens = int(batch["chosen_cmask"].sum() + batch["rejected_cmask"].sum())
        return loss, {"tokens": tokens, **m}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: list[dict[str, torch.Tensor]]
                 ) -> dict[str, float]:
        """Held-out pairs: the implicit-reward metrics (rewards/*, 0 before training), and
        how often the policy and the reference each give the chosen completion the higher
        sequence log-prob (logp_accuracy, ref_logp_accuracy) with the mean log-prob margins."""
        pol, ref, lc, lr = [], [], [], []
        for b in batches:
            n = b["chosen_ids"].shape[0]
            p, r = self._logps(model, b)
            pol += [p[:n], p[n:]]
            ref += [r[:n], r[n:]]
            lc.append(b["chosen_cmask"].sum(1))
            lr.append(b["rejected_cmask"].sum(1))
        pc, pr = torch.cat(pol[0::2]), torch.cat(pol[1::2])
        rc, rr = torch.cat(ref[0::2]), torch.cat(ref[1::2])
        loss, m = dpo_loss(pc, pr, rc, rr, self.beta, self.loss_type, self.ls,
                           torch.cat(lc), torch.cat(lr))
        return {"pairs": len(pc), "loss": float(loss), **m,
                "logp_accuracy": float((pc > pr).float().mean()),
                "ref_logp_accuracy": float((rc > rr).float().mean()),
                "logp_margin": float((pc - pr).mean()),
                "ref_logp_margin": float((rc - rr).mean())}
