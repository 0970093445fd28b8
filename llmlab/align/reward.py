"""Reward model: a scalar head on our transformer, trained with the Bradley-Terry loss.

r(x, y) is read at the last non-padding token of prompt+completion (as TRL's reward models
read the last token). Loss, as TRL's RewardTrainer:
    -log σ(r_c - r_r - margin)  +  c · mean((r_c + r_r)²)
The second term (`center_rewards_coefficient`, Eisenstein et al. 2023) keeps rewards centred
on zero, which the BT loss alone leaves free (it only sees differences).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import llmlab
from llmlab.align.common import token_logprobs
from llmlab.peft.model import load_adapter, read_adapter_config
from llmlab.train.checkpoint import HEAD_WEIGHTS as HEAD_FILE
from llmlab.weights.io import atomic_dir, load_safetensors, save_safetensors


def last_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row (right- or left-padded rows)."""
    t = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (t + 1)).argmax(1)


class ScalarHead(nn.Module):
    """A transformer with a linear head on its final hidden state: (B, T) -> (B, T) scores.
    Used for reward models (score at the last token) and as PPO's value head (every token;
    `with_logprobs=True` also returns the next-token log-probs of the same forward pass, as
    `token_logprobs` at `temperature`).

    Its state is the wrapped model's (adapter-only for a PeftModel) plus `head.*`, so the
    shared loop's checkpoints and resume carry the head; `export` writes the model in its
    own format plus HEAD_FILE."""

    def __init__(self, model: nn.Module, zero_init: bool = False) -> None:
        super().__init__()
        self.model = model
        d = model.cfg.d_model
        self.head = nn.Linear(d, 1)
        nn.init.normal_(self.head.weight, std=0.0 if zero_init else 1.0 / (d + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    @property
    def cfg(self) -> Any:
        return self.model.cfg

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                with_logprobs: bool = False, temperature: float = 1.0) -> Any:
        if with_logprobs:  # (log-probs (B, T-1), values (B, T))
            logp, hidden = token_logprobs(self.model, input_ids, attention_mask, temperature,
                                          with_hidden=True)
            return logp, self.head(hidden.float()).squeeze(-1)
        out = self.model(input_ids, attention_mask=attention_mask)
        return self.head(out.hidden.float()).squeeze(-1)

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        values = self(input_ids, attention_mask)
        return values.gather(1, last_index(attention_mask)[:, None]).squeeze(1)

    def state_dict(self, *args: Any, **kw: Any) -> dict[str, Any]:  # type: ignore[override]
        head = {"head." + k: v.detach().clone() for k, v in self.head.state_dict().items()}
        return {**self.model.state_dict(), **head}

    def load_state_dict(self, sd: dict[str, Any], strict: bool = True,  # type: ignore[override]
                        assign: bool = False) -> Any:
        head = {k[5:]: v for k, v in sd.items() if k.startswith("head.")}
        self.head.load_state_dict(head)
        return self.model.load_state_dict({k: v for k, v in sd.items()
                                           if not k.startswith("head.")}, strict=strict)

    def save_head(self, out: str | Path) -> None:
        Path(out).mkdir(parents=True, exist_ok=True)
        save_safetensors({"head." + k: v.detach().cpu() for k, v in
                          self.head.state_dict().items()}, Path(out) / HEAD_FILE)

    def load_head(self, src: str | Path) -> None:
        sd = load_safetensors(Path(src) / HEAD_FILE)
        try:
            self.head.load_state_dict({k[5:]: v for k, v in sd.items()})
        except RuntimeError as e:
            raise ValueError(f"{Path(src) / HEAD_FILE}: does not fit this model: {e}") from None


def head_export(inner: Callable[[nn.Module, Path], Any]) -> Callable[[nn.Module, Path], None]:
    """Export a ScalarHead: the wrapped model by `inner`, then HEAD_FILE, as one atomic dir."""
    def export(m: nn.Module, out: Path) -> None:
        with atomic_dir(out) as tmp:
            inner(m.model, tmp)
            m.save_head(tmp)
    return export


def load_reward_model(path: str | Path) -> ScalarHead:
    """A reward model saved by `llmlab reward` (a run dir or its final/ dir): the full
    model or the base plus its LoRA adapter, and HEAD_FILE. Frozen, in eval mode."""
    return load_reward_lm(path)[0]


def load_reward_lm(path: str | Path) -> tuple[ScalarHead, Any]:
    """`load_reward_model`, and the LM it was built from (its tokenizer and chat template
    render the pairs the reward model scores)."""
    path = Path(path)
    if not (path / HEAD_FILE).exists() and (path / "final" / HEAD_FILE).exists():
        path = path / "final"
    if not (path / HEAD_FILE).exists():
        raise ValueError(f"{path}: not a reward model (no {HEAD_FILE}); train one with "
                         "`llmlab reward --out DIR`")
    if (path / "adapter_config.json").exists():
        base = read_adapter_config(path).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{path / 'adapter_config.json'}: field "
                             "'base_model_name_or_path' is needed to load the reward model")
        lm = llmlab.load(base)
        model: nn.Module = load_adapter(lm.model, path)
    else:
        lm = llmlab.load(path)
        model = lm.model
    rm = ScalarHead(model)
    rm.load_head(path)
    return rm.eval().requires_grad_(False), lm


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
    r_chosen, r_rejected = r_chosen.detach(), r_rejected.detach()
    return loss, {"accuracy": float((r_chosen > r_rejected).float().mean()),
                  "rewards/chosen": float(r_chosen.mean()),
                  "rewards/rejected": float(r_rejected.mean()),
                  "rewards/margin": float((r_chosen - r_rejected).mean())}


@torch.no_grad()
def pair_scores(rm: ScalarHead, batches: list[dict[str, Any]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """r(chosen) and r(rejected) of every pair in `batches` (pref_tensors' keys)."""
    rc = [rm.score(b["chosen_ids"], b["chosen_mask"]).float() for b in batches]
    rr = [rm.score(b["rejected_ids"], b["rejected_mask"]).float() for b in batches]
    return torch.cat(rc), torch.cat(rr)


def pairwise_accuracy(rm: ScalarHead, batches: list[dict[str, Any]]) -> float:
    """Held-out accuracy: the fraction of pairs where r(chosen) > r(rejected)."""
    rc, rr = pair_scores(rm, batches)
    return float((rc > rr).float().mean()) if len(rc) else 0.0


def length_baseline(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """What a reward model could score on these pairs by length alone: the accuracy of
    "the shorter completion is chosen" and of "the longer is chosen", in completion tokens
    as the model reads them (after truncation), ties counted as half right. The better of
    the two is the baseline a reward model has to beat (BENCHMARKS.md: reward models here
    learned such shortcuts)."""
    nc = torch.cat([b["chosen_cmask"].sum(1) for b in batches]).float()
    nr = torch.cat([b["rejected_cmask"].sum(1) for b in batches]).float()
    n = max(len(nc), 1)
    ties = float((nc == nr).sum()) / n
    shorter = float((nc < nr).sum()) / n + ties / 2
    longer = float((nc > nr).sum()) / n + ties / 2
    return {"shorter_wins": shorter, "longer_wins": longer, "length_ties": ties,
            "length_baseline": max(shorter, longer),
            "length_rule": "shorter" if shorter >= longer else "longer"}


def held_out_metrics(rm: ScalarHead, batches: list[dict[str, Any]]) -> dict[str, Any]:
    """A reward model on held-out pairs: pairwise accuracy, mean margin r_c - r_r, the BT
    loss, and the length baseline on the same pairs."""
    rc, rr = pair_scores(rm, batches)
    loss, m = reward_loss(rc, rr)
    return {"pairs": len(rc), "pairwise_accuracy": m["accuracy"],
            "margin": m["rewards/margin"], "bt_loss": float(loss),
            **length_baseline(batches)}


def reward_batch_loss(rm: nn.Module, batch: dict[str, torch.Tensor], center_coef: float = 0.0
                      ) -> tuple[torch.Tensor, dict[str, Any]]:
    """loss_fn for the shared loop: chosen and rejected in one forward."""
    ids = torch.cat([batch["chosen_ids"], batch["rejected_ids"]])
    mask = torch.cat([batch["chosen_mask"], batch["rejected_mask"]])
    values = rm(ids, mask)  # through forward, so DDP sees the call
    scores = values.gather(1, last_index(mask)[:, None]).squeeze(1)
    n = batch["chosen_ids"].shape[0]
    loss, m = reward_loss(scores[:n], scores[n:], batch.get("margin"), center_coef)
    return loss, {"tokens": int(mask.sum()), **m}
