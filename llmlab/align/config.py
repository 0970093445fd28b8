"""The alignment commands' switches (shared, GRPO's and PPO's), torch-free so the CLI can
build its flags without torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


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
    # dpo on a *-prefs task: test problems of its task answered greedily at each eval
    # (heldout/accuracy in metrics.jsonl); 0: none
    heldout_prompts: int = 16


@dataclass
class GRPOConfig:
    num_generations: int = 4  # G, completions per prompt
    prompts_per_step: int = 2  # prompts per rollout (each gets G completions)
    max_new_tokens: int = 64  # completion length cap
    temperature: float = 1.0  # rollout sampling temperature
    scale_rewards: Literal["group", "batch", "none"] = "group"  # divide advantages by this std
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"  # token aggregation
    epsilon: float = 0.2  # ε_low: ratio clip below 1 - ε
    epsilon_high: float = 0.0  # ε_high: ratio clip above 1 + ε_high; 0: same as epsilon
    beta: float = 0.0  # β·k3 KL to the reference; 0: no reference model
    iterations: int = 1  # μ: optimisation passes per rollout
    # token: a ratio π/π_old per token (GRPO); sequence: one per completion, the geometric
    # mean of its tokens' (GSPO, Zheng et al. 2025), as TRL's importance_sampling_level
    importance_sampling_level: Literal["token", "sequence"] = "token"
    # held-out problems (the task's test split) scored greedily at step 0 and each
    # --eval-every step: heldout/accuracy in the metrics; 0: none
    eval_prompts: int = 0
    zero_std_warn: float = 0.5  # warn at this fraction of groups with no reward spread (> 1: never)

    def validate(self) -> None:
        for name in ("num_generations", "prompts_per_step", "max_new_tokens", "iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.importance_sampling_level not in ("token", "sequence"):
            raise ValueError("importance_sampling_level must be token or sequence, got "
                             f"{self.importance_sampling_level!r}")
        if self.eval_prompts < 0:
            raise ValueError(f"eval_prompts must be >= 0, got {self.eval_prompts}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (log-probs divide by it), got "
                             f"{self.temperature}")


@dataclass
class PPOConfig:
    """Defaults are TRL's PPOConfig: clip 0.2, vf_coef 0.1, γ 1, λ 0.95, kl_coef 0.05,
    4 PPO epochs, temperature 0.7. As in TRL, a rollout holds batch_size × grad_accum
    completions (one per prompt) and each PPO epoch over it is one optimizer step
    (num_mini_batches=1), so --max-steps N makes N / ppo_epochs rollouts."""

    reward_model: str = ""  # a `llmlab reward` run; empty: the task's verifier scores
    max_new_tokens: int = 64  # completion length cap
    temperature: float = 0.7  # rollout sampling temperature
    kl_coef: float = 0.05  # per-token KL penalty to the reference, in the reward
    kl_estimator: Literal["k1", "k3"] = "k1"  # k1: log ratio; k3: (r - 1) - log r
    gamma: float = 1.0  # γ, reward discount per token
    lam: float = 0.95  # λ of GAE
    cliprange: float = 0.2  # policy ratio clip ε
    cliprange_value: float = 0.2  # value prediction clip around the rollout's values
    vf_coef: float = 0.1  # weight of the value loss
    ppo_epochs: int = 4  # optimisation passes (one optimizer step each) per rollout
    whiten_rewards: bool = False  # scale rewards to unit std over the rollout before GAE
    missing_eos_penalty: float = 0.0  # subtracted from a score when no EOS was generated

    def validate(self) -> None:
        for name in ("max_new_tokens", "ppo_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (log-probs divide by it), got "
                             f"{self.temperature}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError(f"gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be k1 or k3, got {self.kl_estimator!r}")
