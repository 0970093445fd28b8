"""CLI: `llmlab reward|dpo|ppo|grpo` (wired in by `add_commands`): flags in, `align.run.run`.

    llmlab dpo --model M [--adapter DIR] --data FILE|--task NAME --out RUN [--loss-type ipo]
    llmlab ppo --model M --task arithmetic [--reward-model RM_RUN] --out RUN [--kl-coef 0.05]
Every AlignConfig / GRPOConfig / PPOConfig / TrainConfig field is a flag (dataclass -> flag).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from llmlab.align.config import AlignConfig, GRPOConfig, PPOConfig
from llmlab.cliutil import guard, strict
from llmlab.train.config import PRETRAIN_ONLY, TrainConfig
from llmlab.train.flags import add_dataclass_args, from_flags

ALIGN_TRAIN = dict(max_steps=100, batch_size=4, seq_len=256, lr=5e-6, warmup_steps=5,
                   weight_decay=0.0, eval_every=0, eval_batches=4, ckpt_every=0, log_every=1,
                   sample_tokens=0)


def run(algo: str, acfg: AlignConfig, tcfg: TrainConfig, run_dir: Path, gcfg: Any = None
        ) -> dict[str, Any]:
    """`llmlab.align.run.run`, imported on use: registering the flags needs no torch."""
    from llmlab.align.run import run as run_algo

    return run_algo(algo, acfg, tcfg, run_dir, gcfg)


def _cmd(algo: str):  # noqa: ANN202
    def cmd(a: argparse.Namespace) -> int:
        acfg = from_flags(AlignConfig, a, a._align_fields, "align config")
        gcfg = (from_flags(ALGO_CONFIGS[algo], a, a._algo_fields, f"{algo} config")
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


ALGO_CONFIGS: dict[str, type] = {"grpo": GRPOConfig, "ppo": PPOConfig}
HELP = {"reward": "train a reward model (Bradley-Terry) on preference pairs",
        "dpo": "direct preference optimisation (sigmoid | ipo | hinge)",
        "ppo": "PPO with a value head; reward model score at EOS, or the task's verifier",
        "grpo": "GRPO with verifiable rewards"}
PREF_ONLY = ("val_examples", "pref_samples", "pref_temperature", "pref_hint", "pref_pairing",
             "heldout_prompts")
NOT_FOR = {"grpo": ("beta", "loss_type_dpo", "label_smoothing", "center_rewards_coefficient",
                    *PREF_ONLY),
           "ppo": ("beta", "loss_type_dpo", "label_smoothing", "center_rewards_coefficient",
                   *PREF_ONLY),
           "reward": ("beta", "loss_type_dpo", "label_smoothing", "heldout_prompts"),
           "dpo": ("center_rewards_coefficient",)}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `reward`, `dpo`, `ppo` and `grpo`."""
    for algo in ("reward", "dpo", "ppo", "grpo"):
        p = subparsers.add_parser(algo, help=HELP[algo], description=HELP[algo])
        strict(p)
        p.add_argument("--out", required=True, help="run directory (required)")
        af = add_dataclass_args(p, AlignConfig, "align", skip=NOT_FOR[algo])
        gf = (add_dataclass_args(p, ALGO_CONFIGS[algo], algo) if algo in ALGO_CONFIGS
              else [])
        tf = add_dataclass_args(p, TrainConfig, "training", skip=PRETRAIN_ONLY,
                                defaults=train_defaults(algo, AlignConfig.peft),
                                notes={"lr": f"{FULL_LR[algo]:g} with --peft none"})
        fn = guard(_cmd(algo))
        p.set_defaults(fn=fn, func=fn, _align_fields=af, _algo_fields=gf, _train_fields=tf)
