"""Reward model: a scalar head on our transformer, trained with the Bradley-Terry loss.

r(x, y) is read at the last non-padding token of prompt+completion (as TRL's reward models
read the last token). Loss, as TRL's RewardTrainer:
    -log σ(r_c - r_r - margin)  +  c · mean((r_c + r_r)²)
The second term (`center_rewards_coefficient`, Eisenstein et al. 2023) keeps rewards centred
on zero, which the BT loss alone leaves free (it only sees differences).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HEAD_FILE = "reward_head.pt"


def last_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row (right- or left-padded rows)."""
    t = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (t + 1)).argmax(1)


class ScalarHead(nn.Module):
    """A transformer with a linear head on its final hidden state: (B, T) -> (B, T) scores.
    Used for reward models (score at the last token) and PPO value heads (every token)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        d = model.cfg.d_model
        self.head = nn.Linear(d, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (d + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.model(input_ids, attention_mask=attention_mask).hidden
        return self.head(h.float()).squeeze(-1)

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        values = self(input_ids, attention_mask)
        return values.gather(1, last_index(attention_mask)[:, None]).squeeze(1)

    def save_head(self, out: str | Path) -> None:
        Path(out).mkdir(parents=True, exist_ok=True)
        torch.save(self.head.state_dict(), Path(out) / HEAD_FILE)

    def load_head(self, src: str | Path) -> None:
        self.head.load_state_dict(torch.load(Path(src) / HEAD_FILE, weights_only=True))


def reward_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                margin: torch.Tensor | None = None, center_coef: float = 0.0
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry loss (mean over pairs) and metrics."""
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    return loss, {"accuracy": float((r_chosen > r_rejected).float().mean()),
                  "rewards/chosen": float(r_chosen.mean()),
                  "rewards/rejected": float(r_rejected.mean()),
                  "rewards/margin": float((r_chosen - r_rejected).mean())}


def pairwise_accuracy(rm: ScalarHead, batches: list[dict[str, Any]]) -> float:
    """Held-out accuracy: the fraction of pairs where r(chosen) > r(rejected)."""
    right = total = 0
    with torch.no_grad():
        for b in batches:
            rc = rm.score(b["chosen_ids"], b["chosen_mask"])
            rr = rm.score(b["rejected_ids"], b["rejected_mask"])
            right += int((rc > rr).sum())
            total += rc.numel()
    return right / max(total, 1)


def reward_batch_loss(rm: nn.Module, batch: dict[str, torch.Tensor], center_coef: float = 0.0
                      ) -> tuple[torch.Tensor, dict[str, Any]]:
    """loss_fn for the shared loop: chosen and rejected in one forward."""
    ids = torch.cat([batch["chosen_ids"], batch["rejected_ids"]])
    mask = torch.cat([batch["chosen_mask"], batch["rejected_mask"]])
    scores = rm.score(ids, mask) if hasattr(rm, "score") else rm.module.score(ids, mask)
    n = batch["chosen_ids"].shape[0]
    loss, m = reward_loss(scores[:n], scores[n:], batch.get("margin"), center_coef)
    return loss, {"tokens": int(mask.sum()), **m}
