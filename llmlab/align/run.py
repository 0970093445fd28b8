"""One alignment run on the shared Trainer: `run("dpo", acfg, tcfg, run_dir)`.

Every algorithm gives the Trainer a batch source and a loss (`ALGORITHMS`); the policy, the
reference and the data are set up once here, and held-out pairs are scored after training
(`evaluate`). `llmlab reward|dpo|ppo|grpo` (align/cli.py) only parses flags and calls `run`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import llmlab
from llmlab.align.common import frozen_copy
from llmlab.align.config import AlignConfig, GRPOConfig, PPOConfig
from llmlab.align.data import (
    PairBatches,
    load_prefs,
    load_prompts,
    pref_tensors,
    task_prefs,
    task_prompts,
)
from llmlab.align.dpo import DPOLoss
from llmlab.align.grpo import HeldOut, RolloutBatches, grpo_loss_fn
from llmlab.align.heldout import heldout_fn
from llmlab.align.ppo import PPOBatches, ppo_loss_fn
from llmlab.align.reward import (
    ScalarHead,
    head_export,
    held_out_metrics,
    load_reward_model,
    reward_batch_loss,
)
from llmlab.generate.chat import template_for
from llmlab.peft.model import adopt_template, get_peft_model, load_adapter
from llmlab.train.config import TrainConfig
from llmlab.train.distributed import Dist, init_distributed, shutdown, to_device, unwrap
from llmlab.train.loop import BatchSource, LossFn, Trainer
from llmlab.weights.registry import save_checkpoint

Export = Callable[[nn.Module, Path], Any]


def load_policy(acfg: AlignConfig) -> tuple[Any, nn.Module, Export]:
    """(lm, the model to train, its export fn): the model with a new LoRA adapter, the
    adapter `acfg.adapter` trained further, or (peft none) all of its weights."""
    lm = llmlab.load(acfg.model)
    if acfg.adapter:
        pm = load_adapter(lm.model, acfg.adapter)
        if pm.method not in ("lora", "dora"):
            raise ValueError(f"{acfg.adapter}: alignment trains LoRA/DoRA adapters, not "
                             f"{pm.method}")
        for n, p in pm.named_parameters():
            p.requires_grad_("lora_" in n)
        # Prompts in the format the adapter learnt (SFT --chat-template), kept for the next.
        tpl = adopt_template(lm, acfg.adapter)
        return lm, pm, lambda m, out: m.save_adapter(out, chat_template=tpl)
    if acfg.peft == "none":
        return lm, lm.model, lambda m, out: save_checkpoint(m, out, lm.tokenizer)
    pm = get_peft_model(lm.model, "lora", base_name=acfg.model, r=acfg.lora_r,
                        lora_alpha=acfg.lora_alpha, target_modules=["q_proj", "v_proj"])
    return lm, pm, lambda m, out: m.save_adapter(out)


@dataclass
class Start:
    """What every algorithm builds from: the configs, the loaded model and the ranks."""

    acfg: AlignConfig
    tcfg: TrainConfig
    gcfg: Any  # GRPOConfig | PPOConfig | None
    lm: Any
    template: Any  # the chat template prompts are rendered in
    model: nn.Module  # the policy to train (LoRA-wrapped unless peft is none)
    export: Export
    dist: Dist

    def reference(self) -> nn.Module | None:
        """π_ref: a frozen copy, on the run's device, when all weights train; None means the
        policy with its adapters disabled (`common.Reference`)."""
        full = self.acfg.peft == "none" and not self.acfg.adapter
        return frozen_copy(self.lm.model).to(self.dist.device) if full else None


Scorer = Callable[[nn.Module, list[dict[str, Any]]], dict[str, Any]]


@dataclass
class Setup:
    """What the Trainer runs: the model it updates, a batch source and a loss; and for
    held-out pairs, how `evaluate` scores them after training."""

    model: nn.Module
    export: Export
    batches: BatchSource
    loss_fn: LossFn
    evals: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # held-out batches
    score: Scorer | None = None
    eval_fn: Callable[[nn.Module], dict[str, Any]] | None = None  # metrics at each evaluation


def _one_source(acfg: AlignConfig) -> None:
    if bool(acfg.data) == bool(acfg.task):
        raise ValueError("give exactly one of --data FILE or --task NAME")


def _pairs(s: Start) -> tuple[PairBatches, list[dict[str, Any]]]:
    """Preference pairs as a batch source, and the held-out ones as evaluation batches."""
    a, t = s.acfg, s.tcfg
    _one_source(a)
    pairs = (load_prefs(a.data)[: a.max_examples] if a.data else
             task_prefs(s.lm, a.task, a.max_examples, None, 0, a.pref_samples, a.pref_hint,
                        a.pref_temperature, a.pref_pairing))
    nval = min(a.val_examples, len(pairs) // 4)
    val, pairs = pairs[:nval], pairs[nval:]
    tok, template = s.lm.tokenizer, s.template
    rows = pref_tensors(tok, template, pairs, t.seq_len)
    evals = []
    if val:
        vt = pref_tensors(tok, template, val, t.seq_len)
        evals = [{k: v[i:i + t.batch_size] for k, v in vt.items()}
                 for i in range(0, len(val), t.batch_size)]
    return PairBatches(rows, t.batch_size, t.seed, s.dist.rank, s.dist.world), evals


def _prompts(s: Start, need_verifier: bool = True) -> list[dict[str, Any]]:
    a = s.acfg
    _one_source(a)
    if a.data:
        return load_prompts(a.data, need_verifier)[: a.max_examples]
    return task_prompts(a.task, a.max_examples, seed=s.tcfg.seed)


def reward(s: Start) -> Setup:
    """A Bradley-Terry reward model: a scalar head on the policy, trained on pairs."""
    batches, evals = _pairs(s)
    loss = functools.partial(reward_batch_loss, center_coef=s.acfg.center_rewards_coefficient)
    return Setup(ScalarHead(s.model), head_export(s.export), batches, loss, evals,
                 held_out_metrics)


def dpo(s: Start) -> Setup:
    batches, evals = _pairs(s)
    a = s.acfg
    loss = DPOLoss(s.reference(), a.beta, a.loss_type_dpo, a.label_smoothing)
    accuracy = heldout_fn(a.task, a.heldout_prompts, s.lm.tokenizer, s.template)

    def eval_fn(model: nn.Module) -> dict[str, float]:
        """Held-out pairs' metrics (val/rewards/*, val/logp_*...) and the task's held-out
        accuracy: the first can rise while the second falls. The pairs are scored here only:
        the trainer's own pair scoring is off when an eval_fn does it (run below)."""
        out = {}
        if evals:
            ev = loss.evaluate(model, [to_device(b, s.dist.device) for b in evals])
            out = {f"val/{k}": v for k, v in ev.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return {**out, **(accuracy(model) if accuracy else {})}

    return Setup(s.model, s.export, batches, loss, evals, loss.evaluate, eval_fn)


def ppo(s: Start) -> Setup:
    """PPO with a value head (V = 0 to start) on the policy's trunk."""
    c: PPOConfig = s.gcfg
    prompts = _prompts(s, need_verifier=not c.reward_model)
    ref = s.reference()
    rm = None
    if c.reward_model:
        rm = load_reward_model(c.reward_model).to(s.dist.device)
        if rm.cfg.vocab_size != s.lm.model.cfg.vocab_size:
            raise ValueError(f"--reward-model {c.reward_model}: vocabulary of "
                             f"{rm.cfg.vocab_size} tokens, the policy has "
                             f"{s.lm.model.cfg.vocab_size}; they must share a tokenizer")
    model = ScalarHead(s.model, zero_init=True)
    t = s.tcfg
    batches = PPOBatches(model, s.lm.tokenizer, s.template, prompts, c, t.batch_size,
                         t.grad_accum, t.seed, ref, rm, s.dist.rank)
    return Setup(model, head_export(s.export), batches, ppo_loss_fn(c))


def grpo(s: Start) -> Setup:
    c: GRPOConfig = s.gcfg
    t = s.tcfg
    ref = s.reference() if c.beta else None  # k3 needs π_ref only with β > 0
    batches = RolloutBatches(s.model, s.lm.tokenizer, s.template, _prompts(s), c, t.seed, ref,
                             rank=s.dist.rank, grad_accum=t.grad_accum)
    held = None
    if c.eval_prompts:
        if not s.acfg.task or not t.eval_every:
            raise ValueError("eval_prompts: needs --task (its test split is held out) and "
                             "--eval-every N > 0 (when to score them)")
        held = HeldOut(s.lm.tokenizer, s.template,
                       task_prompts(s.acfg.task, c.eval_prompts, split="test"), c.max_new_tokens)
    return Setup(s.model, s.export, batches, grpo_loss_fn(c), eval_fn=held)


# Each algorithm's batch source and loss (and the model the Trainer updates).
ALGORITHMS: dict[str, Callable[[Start], Setup]] = {
    "reward": reward, "dpo": dpo, "ppo": ppo, "grpo": grpo}


class PairTrainer(Trainer):
    """The shared loop, plus the held-out pairs' own metrics (`Setup.score`: pairwise
    accuracy, margin...) beside val_loss at each evaluation, as `val/<name>`, so a page can
    watch them over steps rather than only in eval.json at the end."""

    def __init__(self, *a: Any, score: Scorer | None = None, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.score = score

    def _log(self, rec: dict[str, Any]) -> None:
        # FSDP: every rank takes part in the forwards (as Trainer._samples); else rank 0 only.
        if "val_loss" in rec and self.score is not None and (
                self.dist.is_main or (self.dist.fsdp and self.dist.enabled)):
            model = self.model if self.dist.fsdp else unwrap(self.raw)
            model.eval()
            with torch.no_grad(), self._autocast():
                m = self.score(model, [to_device(b, self.device) for b in self.eval_data])
            model.train()
            rec.update({f"val/{k}": v for k, v in m.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
        super()._log(rec)


@torch.no_grad()
def evaluate(setup: Setup, device: torch.device) -> dict[str, Any] | None:
    """Held-out pairs after training: the reward model's pairwise accuracy, or DPO's
    implicit-reward and log-prob metrics (`DPOLoss.evaluate`). None: nothing to score."""
    if setup.score is None or not setup.evals:
        return None
    setup.model.eval()
    return setup.score(setup.model, [to_device(b, device) for b in setup.evals])


def run(algo: str, acfg: AlignConfig, tcfg: TrainConfig, run_dir: Path,
        gcfg: Any = None) -> dict[str, Any]:
    """Train `algo` (reward | dpo | ppo | grpo); `gcfg` is the GRPOConfig or PPOConfig.
    Writes config.json, the Trainer's files and (reward, dpo with held-out pairs) eval.json."""
    tcfg.validate()
    if gcfg is not None:
        gcfg.validate()
    d = init_distributed(tcfg.device, tcfg.fsdp)
    try:
        torch.manual_seed(tcfg.seed)
        lm, model, export = load_policy(acfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        start = Start(acfg, tcfg, gcfg, lm, template_for(lm), model, export, d)
        setup = ALGORITHMS[algo](start)
        (run_dir / "config.json").write_text(json.dumps(
            {"algo": algo, "align": dataclasses.asdict(acfg), "train": dataclasses.asdict(tcfg),
             **({algo: dataclasses.asdict(gcfg)} if gcfg else {})}, indent=1) + "\n")
        trainer = PairTrainer(setup.model, tcfg, run_dir, setup.batches, setup.loss_fn,
                              dist=d, export=setup.export, eval_data=setup.evals,
                              eval_fn=setup.eval_fn, run_info={"algo": algo},
                              compat={"algo": algo, "model": acfg.model},
                              score=None if setup.eval_fn else setup.score)
        out = trainer.fit()
        ev = evaluate(setup, d.device) if d.is_main else None
        if ev is not None:
            out["eval"] = ev
            if "pairwise_accuracy" in ev:  # the reward model's, printed by the CLI
                out["val_accuracy"] = ev["pairwise_accuracy"]
            (run_dir / "eval.json").write_text(json.dumps(ev, indent=1) + "\n")
        return out
    finally:
        shutdown(d)
