"""CLI: `llmlab reward|dpo|ppo|grpo` on the shared Trainer (wired in by `add_commands`).

    llmlab dpo --model M [--adapter DIR] --data FILE|--task NAME --out RUN [--loss-type ipo]
    llmlab ppo --model M --task arithmetic [--reward-model RM_RUN] --out RUN [--kl-coef 0.05]
Every AlignConfig / GRPOConfig / PPOConfig / TrainConfig field is a flag (dataclass -> flag).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmlab.cliutil import guard, strict
from llmlab.train.config import TrainConfig, add_dataclass_args, from_flags

ALIGN_TRAIN = dict(max_steps=100, batch_size=4, seq_len=256, lr=5e-6, warmup_steps=5,
                   weight_decay=0.0, eval_every=0, eval_batches=4, ckpt_every=0, log_every=1,
                   sample_tokens=0)


@dataclass
class AlignConfig:
    model: str = "smollm2-135m-instruct"  # policy model name or directory
    adapter: str = ""  # start from this LoRA adapter (trained further; reference: disabled)
    data: str = ""  # preference JSONL (reward, dpo) or RL prompt JSONL (grpo, ppo)
    task: str = ""  # bundled: arithmetic[-easy]|trivia|humaneval (grpo, ppo); *-prefs (reward, dpo)
    peft: Literal["none", "lora"] = "lora"  # none: train all weights (reference: a frozen copy)
    lora_r: int = 8  # LoRA rank (q_proj, v_proj)
    lora_alpha: float = 16.0  # LoRA scale numerator: updates are scaled by alpha / r
    beta: float = 0.1  # DPO β: strength of the implicit KL to the reference
    loss_type_dpo: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"  # DPO loss (align/dpo.py)
    label_smoothing: float = 0.0  # DPO sigmoid: assumed probability a label is flipped
    center_rewards_coefficient: float = 0.0  # reward: weight of a mean-reward² penalty
    max_examples: int = 256  # pairs or prompts used
    val_examples: int = 16  # pairs held out for evaluation (at most a quarter)
    pref_samples: int = 4  # *-prefs tasks: SmolLM2 samples per prompt (best vs worst)
    pref_temperature: float = 1.0  # *-prefs tasks: sampling temperature
    pref_hint: bool = False  # *-prefs: half the samples see the answer as a hint
    # *-prefs: how a prompt's best and worst samples are paired (align/data.py)
    pref_pairing: Literal["extremes", "length-matched", "perturbed"] = "extremes"


def _model(acfg: AlignConfig) -> tuple[Any, Any, Any]:
    """(lm, trainable model, export fn)."""
    import llmlab
    from llmlab.weights.registry import save_checkpoint

    lm = llmlab.load(acfg.model)
    if acfg.adapter:
        from llmlab.peft.model import adopt_template, load_adapter

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
    from llmlab.peft.model import get_peft_model

    pm = get_peft_model(lm.model, "lora", base_name=acfg.model, r=acfg.lora_r,
                        lora_alpha=acfg.lora_alpha, target_modules=["q_proj", "v_proj"])
    return lm, pm, lambda m, out: m.save_adapter(out)


def _prefs(acfg: AlignConfig, lm: Any) -> list[dict[str, Any]]:
    from llmlab.align.data import load_prefs, task_prefs

    if bool(acfg.data) == bool(acfg.task):
        raise ValueError("give exactly one of --data FILE or --task NAME")
    if acfg.data:
        return load_prefs(acfg.data)[: acfg.max_examples]
    return task_prefs(lm, acfg.task, acfg.max_examples, None, 0, acfg.pref_samples,
                      acfg.pref_hint, acfg.pref_temperature, acfg.pref_pairing)


def _rl_prompts(acfg: AlignConfig, seed: int, need_verifier: bool = True
                ) -> list[dict[str, Any]]:
    from llmlab.align.data import load_prompts, task_prompts

    if bool(acfg.data) == bool(acfg.task):
        raise ValueError("give exactly one of --data FILE or --task NAME")
    if acfg.data:
        return load_prompts(acfg.data, need_verifier)[: acfg.max_examples]
    return task_prompts(acfg.task, acfg.max_examples, seed=seed)


def _frozen_copy(model: Any) -> Any:
    import copy

    return copy.deepcopy(model).eval().requires_grad_(False)


def run(algo: str, acfg: AlignConfig, tcfg: TrainConfig, run_dir: Path,
        gcfg: Any = None) -> dict[str, Any]:
    """Train `algo` (reward | dpo | ppo | grpo); `gcfg` is the GRPOConfig or PPOConfig."""
    import torch

    from llmlab.align.data import PairBatches, pref_tensors
    from llmlab.generate.chat import template_for
    from llmlab.train.distributed import init_distributed, shutdown
    from llmlab.train.loop import Trainer

    tcfg.validate()
    if gcfg is not None:
        gcfg.validate()
    d = init_distributed(tcfg.device, tcfg.fsdp)
    try:
        torch.manual_seed(tcfg.seed)
        lm, model, export = _model(acfg)
        tok, template = lm.tokenizer, template_for(lm)
        run_dir.mkdir(parents=True, exist_ok=True)
        evals: list[dict[str, Any]] = []
        if algo in ("reward", "dpo"):
            pairs = _prefs(acfg, lm)
            nval = min(acfg.val_examples, len(pairs) // 4)
            val, pairs = pairs[:nval], pairs[nval:]
            rows = pref_tensors(tok, template, pairs, tcfg.seq_len)
            batches: Any = PairBatches(rows, tcfg.batch_size, tcfg.seed, d.rank, d.world)
            if val:
                vt = pref_tensors(tok, template, val, tcfg.seq_len)
                evals = [{k: v[i:i + tcfg.batch_size] for k, v in vt.items()}
                         for i in range(0, len(val), tcfg.batch_size)]
            if algo == "dpo":
                from llmlab.align.dpo import DPOLoss

                ref = _frozen_copy(lm.model) if acfg.peft == "none" and not acfg.adapter else None
                loss_fn: Any = DPOLoss(ref, acfg.beta, acfg.loss_type_dpo, acfg.label_smoothing)
            else:
                from llmlab.align.reward import ScalarHead, head_export, reward_batch_loss

                model = ScalarHead(model)
                export = head_export(export)
                c = acfg.center_rewards_coefficient
                loss_fn = lambda m, b: reward_batch_loss(m, b, c)  # noqa: E731
        elif algo == "ppo":
            from llmlab.align.ppo_run import PPOBatches, ppo_loss_fn
            from llmlab.align.reward import ScalarHead, head_export, load_reward_model

            prompts = _rl_prompts(acfg, tcfg.seed, need_verifier=not gcfg.reward_model)
            ref = _frozen_copy(lm.model) if acfg.peft == "none" and not acfg.adapter else None
            rm = None
            if gcfg.reward_model:
                rm = load_reward_model(gcfg.reward_model).to(d.device)
                if rm.cfg.vocab_size != lm.model.cfg.vocab_size:
                    raise ValueError(f"--reward-model {gcfg.reward_model}: vocabulary of "
                                     f"{rm.cfg.vocab_size} tokens, the policy has "
                                     f"{lm.model.cfg.vocab_size}; they must share a tokenizer")
            model = ScalarHead(model, zero_init=True)  # the value head: V = 0 to start
            export = head_export(export)
            batches = PPOBatches(model, tok, template, prompts, gcfg, tcfg.batch_size,
                                 tcfg.grad_accum, tcfg.seed,
                                 ref.to(d.device) if ref is not None else None, rm, d.rank)
            loss_fn = ppo_loss_fn(gcfg)
        else:
            from llmlab.align.grpo_run import RolloutBatches, grpo_loss_fn

            batches = RolloutBatches(model, tok, template, _rl_prompts(acfg, tcfg.seed), gcfg,
                                     tcfg.seed, rank=d.rank, grad_accum=tcfg.grad_accum)
            loss_fn = grpo_loss_fn(gcfg)
        (run_dir / "config.json").write_text(json.dumps(
            {"algo": algo, "align": dataclasses.asdict(acfg), "train": dataclasses.asdict(tcfg),
             **({algo: dataclasses.asdict(gcfg)} if gcfg else {})}, indent=1) + "\n")
        trainer = Trainer(model, tcfg, run_dir, batches, loss_fn, dist=d, export=export,
                          eval_data=evals, run_info={"algo": algo},
                          compat={"algo": algo, "model": acfg.model})
        out = trainer.fit()
        from llmlab.train.loop import to_device

        evals = [to_device(b, d.device) for b in evals]
        if algo == "reward" and evals and d.is_main:
            from llmlab.align.reward import pairwise_accuracy

            model.eval()
            out["val_accuracy"] = pairwise_accuracy(model, evals)
            out["eval"] = {"pairs": sum(len(b["chosen_ids"]) for b in evals),
                           "pairwise_accuracy": out["val_accuracy"]}
        if algo == "dpo" and evals and d.is_main:
            model.eval()
            out["eval"] = loss_fn.evaluate(model, evals)
        if "eval" in out:  # held-out pairs, after training
            (run_dir / "eval.json").write_text(json.dumps(out["eval"], indent=1) + "\n")
        return out
    finally:
        shutdown(d)


def _cmd(algo: str):  # noqa: ANN202
    def cmd(a: argparse.Namespace) -> int:
        acfg = from_flags(AlignConfig, a, a._align_fields, "align config")
        gcfg = (from_flags(ALGO_CONFIGS[algo](), a, a._algo_fields, f"{algo} config")
                if algo in ALGO_CONFIGS else None)
        tcfg = from_flags(TrainConfig, a, a._train_fields, "train config",
                          train_defaults(algo, acfg.peft))
        out = run(algo, acfg, tcfg, Path(a.out), gcfg)
        print(f"done: {out.get('step')} steps; metrics in {Path(a.out) / 'metrics.jsonl'}"
              + (f"; held-out pairwise accuracy {out['val_accuracy']:.3f}"
                 if "val_accuracy" in out else "")
              + (f"; held-out rewards/accuracy {out['eval']['rewards/accuracy']:.3f}, "
                 f"rewards/margin {out['eval']['rewards/margin']:.3f}"
                 if algo == "dpo" and "eval" in out else ""))
        return 0
    return cmd


FULL_LR = {"reward": 1e-5, "dpo": 5e-6, "ppo": 3e-6, "grpo": 1e-6}
LORA_LR_SCALE = 20  # LoRA wants a larger step than full fine-tuning


def train_defaults(algo: str, peft: str) -> dict[str, Any]:
    """The TrainConfig values `llmlab ALGO` uses unless a flag says otherwise."""
    lr = FULL_LR[algo] * (1 if peft == "none" else LORA_LR_SCALE)
    return {**ALIGN_TRAIN, "lr": lr, **({"batch_size": 8} if algo == "ppo" else {})}


def _grpo_config() -> type:
    from llmlab.align.config import GRPOConfig

    return GRPOConfig


def _ppo_config() -> type:
    from llmlab.align.config import PPOConfig

    return PPOConfig


ALGO_CONFIGS = {"grpo": _grpo_config, "ppo": _ppo_config}
HELP = {"reward": "train a reward model (Bradley-Terry) on preference pairs",
        "dpo": "direct preference optimisation (sigmoid | ipo | hinge)",
        "ppo": "PPO with a value head; reward model score at EOS, or the task's verifier",
        "grpo": "GRPO with verifiable rewards"}
PREF_ONLY = ("val_examples", "pref_samples", "pref_temperature", "pref_hint", "pref_pairing")
NOT_FOR = {"grpo": ("beta", "loss_type_dpo", "label_smoothing", "center_rewards_coefficient",
                    *PREF_ONLY),
           "ppo": ("beta", "loss_type_dpo", "label_smoothing", "center_rewards_coefficient",
                   *PREF_ONLY),
           "reward": ("beta", "loss_type_dpo", "label_smoothing"),
           "dpo": ("center_rewards_coefficient",)}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `reward`, `dpo`, `ppo` and `grpo`."""
    for algo in ("reward", "dpo", "ppo", "grpo"):
        p = subparsers.add_parser(algo, help=HELP[algo], description=HELP[algo])
        strict(p)
        p.add_argument("--out", required=True, help="run directory (required)")
        af = add_dataclass_args(p, AlignConfig, "align", skip=NOT_FOR[algo])
        gf = (add_dataclass_args(p, ALGO_CONFIGS[algo](), algo) if algo in ALGO_CONFIGS
              else [])
        tf = add_dataclass_args(p, TrainConfig, "training",
                                defaults=train_defaults(algo, AlignConfig.peft),
                                notes={"lr": f"{FULL_LR[algo]:g} with --peft none"})
        fn = guard(_cmd(algo))
        p.set_defaults(fn=fn, func=fn, _align_fields=af, _algo_fields=gf, _train_fields=tf)
