"""GRPO's switches, torch-free so the CLI can build its flags without importing torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GRPOConfig:
    num_generations: int = 4  # G, completions per prompt
    prompts_per_step: int = 2
    max_new_tokens: int = 64
    temperature: float = 1.0
    scale_rewards: str = "group"  # group | batch | none
    loss_type: str = "dapo"  # grpo | bnpo | dr_grpo | dapo
    epsilon: float = 0.2  # ε_low
    epsilon_high: float = 0.0  # 0: same as epsilon; DAPO uses 0.28
    beta: float = 0.0  # β·k3 KL to the reference
    iterations: int = 1  # μ: optimisation passes per rollout
    zero_std_warn: float = 0.5  # warn when this fraction of groups has no reward spread
