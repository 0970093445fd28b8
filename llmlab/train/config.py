"""Typed training configuration, and dataclass <-> command-line flags.

Every field of a config dataclass becomes a flag (`grad_accum` -> `--grad-accum`), so the CLI
can't drift from the code; the resolved configs are saved as JSON in the run directory."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal


@dataclass
class TrainConfig:
    """The shared loop's settings (pretraining, SFT, DPO, ... all use these)."""

    max_steps: int = 1000  # optimizer steps
    batch_size: int = 8  # sequences per micro-batch per process
    seq_len: int = 256  # tokens per training sequence
    # pretraining: steps over which the sequences grow from seq_len_start to seq_len, in
    # multiples of seq_len_start (sequence length warmup, Li et al. 2022; train/seqlen.py).
    # 0 disables
    seq_len_warmup: int = 0
    seq_len_start: int = 32  # the first sequence length of seq_len_warmup
    grad_accum: int = 1  # micro-batches per optimizer step (per process)
    lr: float = 3e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    warmup_steps: int = 100  # steps of linear warmup from 0 to lr
    # lr decay after warmup; wsd (warmup-stable-decay, Hägele et al. 2024): constant, then
    # a linear decay over the last `cooldown` share of the steps
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    cooldown: float = 0.2  # wsd: the share of the steps spent decaying
    # muon: Muon for the hidden matrices, AdamW for embeddings, head and gains (train/muon.py)
    optimizer: Literal["adamw", "muon"] = "adamw"
    muon_lr: float = 0.02  # Muon's peak lr (the schedule scales it like `lr`)
    muon_momentum: float = 0.95  # Muon's Nesterov momentum
    # muon: the untied token embedding's AdamW lr; 0: `lr`. A row is trained only when its
    # token occurs, so it takes far larger steps than the head (modded-nanogpt: 0.6 vs 0.008)
    embed_lr: float = 0.0
    weight_decay: float = 0.1  # AdamW decoupled weight decay (matrices only)
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW denominator epsilon
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 CPU
    compile: bool = False  # torch.compile the model
    # whole: one graph of the model (and its fused loss); regional: each transformer block on
    # its own, one compile reused by every layer (shorter compile; the rest runs eagerly)
    compile_scope: Literal["whole", "regional"] = "whole"
    checkpoint_activations: bool = False  # recompute blocks in backward: less memory, ~+30% time
    seed: int = 0  # seeds init, data order and sampling
    # stop once the validation bits per byte reach this (checked at each evaluation); the
    # wall time and tokens to get there go into metrics.jsonl. 0 disables
    target_val_bpb: float = 0.0
    device: str = "auto"  # auto | cpu | cuda (or cuda:N)
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    log_every: int = 10  # steps between metrics.jsonl rows
    eval_every: int = 200  # validation loss + samples; 0 disables
    eval_batches: int = 20  # validation batches per evaluation
    sample_tokens: int = 64  # tokens per sample generation at eval; 0 disables
    sample_prompt: str = ""  # text the eval samples continue (after BOS)
    ckpt_every: int = 200  # steps between checkpoints; 0: only at the end
    keep_last: int = 2  # step checkpoints kept, plus the best by val loss
    resume: bool = False  # continue the run in --out from its latest checkpoint
    fsdp: bool = False  # shard parameters with FSDP2 under torchrun (models too big for DDP)
    tensorboard: bool = True  # also write TensorBoard events when tensorboard is installed
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        if self.seq_len_warmup and not 1 <= self.seq_len_start <= self.seq_len:
            raise ValueError(f"seq_len_start={self.seq_len_start} must be in [1, seq_len="
                             f"{self.seq_len}]: seq_len_warmup grows it to seq_len")

    def validate(self) -> None:
        """Types and ranges (RANGES below), for configs built in code rather than by `build`."""
        check_fields(TrainConfig, dataclasses.asdict(self), lambda name: name)
        self.__post_init__()


# TrainConfig fields only pretraining's batch source implements: other commands get no flag.
PRETRAIN_ONLY = ("seq_len_warmup", "seq_len_start")


def base_type(tp: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) of an annotation such as `int | None`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False



@dataclass(frozen=True)
class Range:
    """Allowed values of a number: [lo, hi] with either end open or absent."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, v: float) -> bool:
        return ((self.lo is None or (v > self.lo if self.lo_open else v >= self.lo))
                and (self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)))

    def describe(self, kind: str) -> str:
        if self.hi is None and self.lo == 0:
            return f"{'positive' if self.lo_open else 'non-negative'} {kind}"
        if self.hi is None:
            return f"{kind} {'>' if self.lo_open else '>='} {self.lo:g}"
        return (f"{kind} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
                f"{')' if self.hi_open else ']'}")


POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)  # [0, 1]
BELOW_ONE = Range(0, 1, hi_open=True)  # [0, 1): probabilities that can't be certain
SIZES = dict.fromkeys(  # counts and sizes: at least one
    ("max_steps", "batch_size", "seq_len", "grad_accum", "eval_batches", "vocab_size",
     "d_model", "n_layer", "n_head", "n_kv_head", "head_dim", "d_ff", "max_seq_len", "lora_r",
     "num_virtual_tokens", "bottleneck", "num_generations", "prompts_per_step",
     "max_new_tokens", "iterations", "ppo_epochs"), POSITIVE)

# Each config class's numeric ranges, by class name (config.py stays free of the model and
# align imports). The types come from the annotations; these are what a type can't say.
RANGES: dict[str, dict[str, Range]] = {
    "TrainConfig": {**SIZES, "lr": POSITIVE, "min_lr_ratio": FRACTION, "cooldown": FRACTION,
                    "muon_lr": POSITIVE, "muon_momentum": BELOW_ONE, "embed_lr": NON_NEGATIVE,
                    "seq_len_warmup": NON_NEGATIVE, "seq_len_start": POSITIVE,
                    "target_val_bpb": NON_NEGATIVE,
                    "warmup_steps": NON_NEGATIVE, "weight_decay": NON_NEGATIVE,
                    "beta1": BELOW_ONE, "beta2": BELOW_ONE, "eps": POSITIVE,
                    **dict.fromkeys(("grad_clip", "threads", "log_every", "eval_every",
                                     "sample_tokens", "ckpt_every", "keep_last"), NON_NEGATIVE)},
    "ModelConfig": {**SIZES, "rope_theta": POSITIVE, "norm_eps": POSITIVE, "logit_softcap":
                    NON_NEGATIVE, "value_embeds": NON_NEGATIVE,
                    "type_vocab_size": NON_NEGATIVE, "dropout": BELOW_ONE,
                    "encoder_layers": NON_NEGATIVE, "pad_token_id": NON_NEGATIVE,
                    "bos_token_id": NON_NEGATIVE},
    "DataConfig": {"val_fraction": BELOW_ONE},
    "SFTConfig": {**SIZES, "lora_alpha": POSITIVE, "lora_dropout": BELOW_ONE, "max_examples":
                  NON_NEGATIVE, "val_examples": NON_NEGATIVE, "sample_prompts": NON_NEGATIVE},
    "AlignConfig": {**SIZES, "lora_alpha": POSITIVE, "beta": POSITIVE,
                    "label_smoothing": Range(0, 0.5), "center_rewards_coefficient":
                    NON_NEGATIVE, "max_examples": POSITIVE, "val_examples": NON_NEGATIVE,
                    "pref_samples": Range(2), "pref_temperature": POSITIVE, "heldout_prompts":
                    NON_NEGATIVE},
    "GRPOConfig": {**SIZES, "temperature": POSITIVE, "epsilon": NON_NEGATIVE,
                   "epsilon_high": NON_NEGATIVE, "beta": NON_NEGATIVE,
                   "zero_std_warn": NON_NEGATIVE},
    "PPOConfig": {**SIZES, "temperature": POSITIVE, "kl_coef": NON_NEGATIVE,
                  "gamma": FRACTION, "lam": FRACTION, "cliprange": POSITIVE,
                  "cliprange_value": POSITIVE, "vf_coef": NON_NEGATIVE,
                  "missing_eos_penalty": NON_NEGATIVE},
}


def _expected(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return f"a list of {_expected(arg)}"
    return {bool: "true or false", int: "an int", float: "a number", str: "a string",
            type(None): "null", dict: "an object", list: "a list"}.get(tp, str(tp))


def _fits(tp: Any, v: Any) -> bool:
    """Whether a JSON value `v` is of annotation `tp` (strictly: no "3" for 3, no 1 for True)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(a, v) for a in typing.get_args(tp))
    if origin is Literal:
        return any(v == a and type(v) is type(a) for a in typing.get_args(tp))
    if tp is type(None):
        return v is None
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return (isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v))
    if tp is list or origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return isinstance(v, list) and all(_fits(arg, x) for x in v)
    if tp is dict or origin is dict:
        return isinstance(v, dict)
    return isinstance(v, tp) if isinstance(tp, type) else True


def check_fields(cls: type, values: Mapping[str, Any], label: Callable[[str], str]) -> None:
    """Raise ValueError naming the first unknown field, wrong type or out-of-range value.

    `label(name)` says where a field came from: "cfg.json: model.n_head", "--n-head"."""
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in valid]
    if unknown:
        where = label("").rstrip(".: ")
        hints = {k: difflib.get_close_matches(k, valid, n=1, cutoff=0.75) for k in unknown}
        did = "; ".join(f"{k!r}: did you mean {h[0]!r}?" for k, h in hints.items() if h)
        raise ValueError(f"{where}: unknown field(s) {unknown}" + (f" ({did})" if did else "")
                         + f"; valid: {', '.join(valid)}")
    hints = typing.get_type_hints(cls)
    ranges = RANGES.get(cls.__name__, {})
    for name, v in values.items():
        tp = hints[name]
        if not _fits(tp, v):
            raise ValueError(f"{label(name)}: expected {_expected(tp)}, got {v!r}")
        r = ranges.get(name)
        if r is not None and v is not None and not isinstance(v, list) and not r.ok(v):
            base, optional = base_type(tp)
            kind = "int" if base is int else "number"
            raise ValueError(f"{label(name)}: expected a {r.describe(kind)}"
                             + (" or null" if optional else "") + f", got {v!r}")


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """`cls(**values)` once every value is checked (`check_fields`); unknown names are
    reported along with the valid ones, a cross-field error with `where`."""
    check_fields(cls, values, lambda name: f"{where}: {name}")
    try:
        return cls(**values)
    except ValueError as e:  # cross-field checks in __post_init__ (d_model % n_head, ...)
        raise ValueError(f"{where}: {e}") from None


@dataclass
class SFTConfig:
    model: str = "smollm2-135m-instruct"  # model name or directory to fine-tune
    data: str = "trivia"  # a .jsonl/.json file, or a bundled task: trivia | pydocs
    format: Literal["auto", "chat", "alpaca"] = "auto"  # auto: chat if rows have `messages`
    # none: full fine-tuning; else the llmlab.peft method that adds the trainable weights
    peft: Literal["none", "lora", "dora", "qlora", "prompt", "prefix", "adapter"] = "lora"
    lora_r: int = 8  # LoRA rank (lora, dora, qlora)
    lora_alpha: float = 16.0  # LoRA scale numerator: updates are scaled by alpha / r
    lora_dropout: float = 0.0  # dropout on the LoRA branch's input
    target_modules: str = "q_proj,v_proj"  # comma-separated names, or all-linear
    use_rslora: bool = False  # rank-stabilised scale alpha / sqrt(r)
    num_virtual_tokens: int = 20  # prompt / prefix tuning: learnt tokens
    bottleneck: int = 64  # bottleneck adapters: hidden width
    packing: bool = True  # pack examples into full sequences (never for prompt/prefix tuning)
    system: str | None = None  # system prompt; None: the template's default
    # A preset (chatml | llama3 | zephyr) or a JSON file of ChatTemplate's fields; None: the
    # model's own. The trained model or adapter carries it (generate/chat then use it).
    chat_template: str | None = None
    max_examples: int = 0  # training examples used; 0: all
    val_examples: int = 64  # held out from the training file for val loss (bundled: test split)
    sample_prompts: int = 4  # held-out prompts answered greedily at step 0 and each eval; 0: none

    def peft_options(self) -> dict[str, Any]:
        if self.peft in ("lora", "dora", "qlora"):
            tm = self.target_modules if self.target_modules == "all-linear" else \
                [t.strip() for t in self.target_modules.split(",") if t.strip()]
            return {"r": self.lora_r, "lora_alpha": self.lora_alpha,
                    "lora_dropout": self.lora_dropout, "target_modules": tm,
                    "use_rslora": self.use_rslora}
        if self.peft in ("prompt", "prefix"):
            return {"num_virtual_tokens": self.num_virtual_tokens}
        if self.peft == "adapter":
            return {"bottleneck": self.bottleneck}
        return {}
