"""Alignment and reasoning RL: reward models, DPO/IPO/hinge, PPO, GRPO, verifiable rewards."""
