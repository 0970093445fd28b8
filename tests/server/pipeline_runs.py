"""A real two-run chain started through the API, shared by the pipeline's API and browser
tests (made once per server): a 2-step pretraining on SmolLM2's tokenizer, then a 1-step LoRA
SFT started from it by its playground name `run:<pretraining id>`. The pretraining run alone
(checkpoints at steps 1 and 2) is also the evaluation tests' cheap second model."""

from __future__ import annotations

from typing import Any

from .lab_helpers import finish

PRETRAIN = {"preset": "micro", "max_steps": 2, "tokenizer": "smollm2", "d_model": 32,
            "n_layer": 2, "n_head": 2, "seq_len": 32, "max_seq_len": 256, "batch_size": 4,
            "eval_batches": 1, "eval_every": 2, "ckpt_every": 1, "log_every": 1}
SFT = {"data": "trivia", "peft": "lora", "lora_r": 2, "max_steps": 1, "batch_size": 2,
       "seq_len": 256, "max_examples": 8, "val_examples": 2, "eval_every": 0, "ckpt_every": 0,
       "sample_tokens": 0, "warmup_steps": 1}
_made: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
_pre: dict[str, dict[str, Any]] = {}


def pretrained(url: str) -> dict[str, Any]:
    """The pretraining run, as GET /api/runs/{id} gives it."""
    if url not in _pre:
        _pre[url] = finish(url, "pretrain", PRETRAIN)
    return _pre[url]


def chain(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pretraining run, SFT run started from it), as GET /api/runs/{id} gives them."""
    if url not in _made:
        pre = pretrained(url)
        _made[url] = pre, finish(url, "sft", {**SFT, "model": f"run:{pre['id']}"})
    return _made[url]
