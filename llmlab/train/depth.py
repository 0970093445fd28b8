"""One depth dial for pretraining: the number of layers sets the model's whole shape and its
learning rate, as nanochat's `--depth` does (karpathy/nanochat, scripts/base_train.py:
`model_dim = depth * aspect_ratio`, `num_heads = ceil(model_dim / head_dim)`; and
nanochat/gpt.py `setup_optimizers`: AdamW learning rates scaled by
`(model_dim / 768) ** -0.5`, "having tuned the LRs for 768 dim model").

Torch-free, so that the CLI resolves flags without importing torch."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

from llmlab.model.config import ModelConfig

# d_model per layer. nanochat uses 64 (d20 = 1280 wide); 32 keeps the CPU presets' own
# proportions: micro is 3 layers x 96 wide, tiny-cpu 4 x 128, so depth 3 *is* micro's width.
ASPECT = 32
# A fixed head size (nanochat: 128): the heads grow in number, not in size, with the width.
HEAD_DIM = 32
# SwiGLU's hidden size: 8/3 d_model keeps its three matrices at the parameters of a 4x GELU
# MLP (Shazeer 2020; Llama), rounded up to a multiple of 32 (micro: 96 -> 256).
FF_MULT, FF_ROUND = 8 / 3, 32


def _heads(d_model: int) -> int:
    """d_model / HEAD_DIM heads, or the nearest count that divides d_model (an explicit
    --d-model need not be a multiple of the head size)."""
    n = max(1, round(d_model / HEAD_DIM))
    while d_model % n:
        n -= 1
    return n


def swiglu_ff(d_model: int) -> int:
    return FF_ROUND * math.ceil(FF_MULT * d_model / FF_ROUND)


def from_depth(depth: int, base: Mapping[str, Mapping[str, Any]],
               given: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The model and train settings `depth` derives, over a preset's `base` settings.

    n_layer = depth, d_model = depth * ASPECT, n_head = d_model / HEAD_DIM (MHA), d_ff =
    8/3 d_model for SwiGLU (else 4 d_model), lr = the base's lr * (d_model / base d_model)
    ** -0.5: wider models take smaller steps, with the preset's lr tuned at its own width.
    `given` holds the settings set explicitly (flags): they win, and what is derived
    follows them (an explicit --d-model sets the heads, d_ff and lr from that width)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"--depth: expected a positive int, got {depth!r}")
    gm, gt = dict((given or {}).get("model", {})), dict((given or {}).get("train", {}))
    bm, bt = base.get("model", {}), base.get("train", {})
    d_model = int(gm.get("d_model") or depth * ASPECT)
    model: dict[str, Any] = {"n_layer": depth, "d_model": d_model, "n_head": _heads(d_model),
                             "n_kv_head": None, "head_dim": None}
    if "n_head" in gm:  # explicit heads: d_model // n_head each (ModelConfig's default)
        model["n_head"] = gm["n_head"]
    model["d_ff"] = swiglu_ff(d_model) if bm.get("mlp") == "swiglu" else 4 * d_model
    base_lr, base_d = bt.get("lr", 3e-4), bm.get("d_model", ModelConfig.d_model)
    train = {"lr": base_lr * (d_model / base_d) ** -0.5}
    model.update(gm)
    train.update({k: v for k, v in gt.items() if k == "lr"})
    return {"model": model, "train": train}


@functools.cache
def vocab_of(tokenizer: str) -> int:
    """The vocabulary of a tokenizer spec: bpe:N trains N ids (256 bytes + merges + the
    end-of-text token); a named one is loaded (cached)."""
    if tokenizer.startswith("bpe:"):
        try:
            return int(tokenizer[4:])
        except ValueError:
            raise ValueError(f"tokenizer: expected bpe:<vocab size>, got {tokenizer!r}") \
                from None
    from llmlab.tokenizer import load_tokenizer  # loads files: only when asked

    return int(load_tokenizer(tokenizer).n_vocab)


def plan(preset: str, depth: int | None = None, tokenizer: str | None = None,
         max_steps: int | None = None, points: int = 100) -> dict[str, Any]:
    """What a pretraining run of `preset` at `depth` will be before it starts: the model's
    shape and parameter count (ModelConfig.num_params, embedding included), the tokens per
    step, and the learning-rate schedule the Trainer will follow (optim.lr_lambda)."""
    from llmlab.train.presets import get_preset

    base = get_preset(preset)
    given = {"train": {"max_steps": max_steps}} if max_steps else {}
    derived = from_depth(depth, base) if depth is not None else {"model": {}, "train": {}}
    model = {**base["model"], **derived["model"]}
    train = {**base["train"], **derived["train"], **given.get("train", {})}
    tok = tokenizer or base["data"].get("tokenizer", "bpe:4096")
    model.setdefault("max_seq_len", train.get("seq_len", 256))
    cfg = ModelConfig(**{**model, "vocab_size": vocab_of(tok)})
    n = cfg.num_params()
    embed = cfg.vocab_size * cfg.d_model
    steps = int(train.get("max_steps", 1000))
    # The schedule is the Trainer's own (torch is imported there: only the server calls this).
    from llmlab.train.optim import lr_lambda

    f = lr_lambda(int(train.get("warmup_steps", 100)), steps, train.get("schedule", "cosine"),
                  float(train.get("min_lr_ratio", 0.1)), float(train.get("cooldown", 0.2)))
    at = sorted({round(i * (steps - 1) / max(1, points - 1)) for i in range(points)})
    return {
        "preset": preset, "depth": cfg.n_layer, "tokenizer": tok,
        "model": {k: getattr(cfg, k) for k in ("n_layer", "d_model", "n_head", "head_dim",
                                               "d_ff", "vocab_size", "max_seq_len", "mlp")},
        "n_params": n, "n_params_embedding": embed, "n_params_blocks": n - embed,
        # an untrained model guesses uniformly: its loss starts near ln(vocab)
        "uniform_loss": math.log(cfg.vocab_size),
        "lr": train["lr"], "max_steps": steps, "warmup_steps": train.get("warmup_steps"),
        "tokens_per_step": train.get("batch_size", 8) * train.get("seq_len", 256)
        * train.get("grad_accum", 1),
        "eval_every": train.get("eval_every"),
        "schedule": [[s + 1, train["lr"] * f(s)] for s in at],  # the lr logged at step s+1
    }
