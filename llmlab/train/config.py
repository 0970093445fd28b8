"""Typed training configuration, and dataclass <-> command-line flags.

Every field of a config dataclass becomes a flag (`grad_accum` -> `--grad-accum`), so the CLI
can't drift from the code; the resolved configs are saved as JSON in the run directory."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal


@dataclass
class TrainConfig:
    """The shared loop's settings (pretraining, SFT, DPO, ... all use these)."""

    max_steps: int = 1000  # optimizer steps
    batch_size: int = 8  # sequences per micro-batch per process
    seq_len: int = 256
    grad_accum: int = 1  # micro-batches per optimizer step (per process)
    lr: float = 3e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    warmup_steps: int = 100
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 CPU
    compile: bool = False  # torch.compile the model
    # whole: one graph of the model (and its fused loss); regional: each transformer block on
    # its own, one compile reused by every layer (shorter compile; the rest runs eagerly)
    compile_scope: Literal["whole", "regional"] = "whole"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    log_every: int = 10
    eval_every: int = 200  # validation loss + samples; 0 disables
    eval_batches: int = 20
    sample_tokens: int = 64  # tokens per sample generation at eval; 0 disables
    sample_prompt: str = ""
    ckpt_every: int = 200  # 0: only at the end
    keep_last: int = 2  # step checkpoints kept, plus the best by val loss
    resume: bool = False
    fsdp: bool = False  # shard parameters with FSDP2 under torchrun (models too big for DDP)
    tensorboard: bool = True  # also write TensorBoard events when tensorboard is installed
    progress: bool = True  # tqdm bar on rank 0

    def validate(self) -> None:
        for name in ("max_steps", "batch_size", "seq_len", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "ckpt_every", "log_every", "keep_last"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) of an annotation such as `int | None`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def _parser_for(tp: Any, optional: bool) -> Any:
    def parse(s: str) -> Any:
        if optional and s.lower() == "none":
            return None
        if tp is bool:
            if s.lower() in ("1", "true", "yes", "on"):
                return True
            if s.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")
        return tp(s)

    return parse


def add_dataclass_args(p: argparse.ArgumentParser, cls: type, title: str,
                       skip: tuple[str, ...] = ()) -> list[str]:
    """One flag per field, default None (= not given), so presets can fill the rest."""
    g = p.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, optional = _base_type(hints[f.name])
        if typing.get_origin(tp) in (dict, list) or tp in (dict, list):
            continue
        kw: dict[str, Any] = {"dest": f.name, "default": None}
        if typing.get_origin(tp) is Literal:
            kw["choices"] = list(typing.get_args(tp))
        elif tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _parser_for(tp, optional)
            kw["metavar"] = getattr(tp, "__name__", "VALUE").upper()
        g.add_argument(_flag(f.name), **kw)
        names.append(f.name)
    return names


def overrides(ns: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {n: getattr(ns, n) for n in names if getattr(ns, n, None) is not None}


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """`cls(**values)`, with unknown names reported along with the valid ones."""
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in valid]
    if unknown:
        hints = {k: difflib.get_close_matches(k, valid, n=1, cutoff=0.75) for k in unknown}
        did = "; ".join(f"{k!r}: did you mean {h[0]!r}?" for k, h in hints.items() if h)
        raise ValueError(f"{where}: unknown field(s) {unknown}" + (f" ({did})" if did else "")
                         + f"; valid: {', '.join(valid)}")
    return cls(**values)


def unknown_flags_error(extra: list[str], valid: list[str]) -> str:
    flags = [a.split("=")[0] for a in extra if a.startswith("--")]
    msg = f"unknown option(s) {flags or extra}"
    close = [difflib.get_close_matches(f, valid, n=1, cutoff=0.75) for f in flags]
    sugg = [f"{f} -> {c[0]}" for f, c in zip(flags, close, strict=True) if c]
    if sugg:
        msg += f" (did you mean: {', '.join(sugg)})"
    return msg + f"; valid options: {' '.join(sorted(valid))}"


@dataclass
class SFTConfig:
    model: str = "smollm2-135m-instruct"
    data: str = "trivia"  # a .jsonl/.json file, or a bundled task: trivia | pydocs
    format: str = "auto"  # auto | chat | alpaca
    peft: str = "lora"  # none | lora | dora | qlora | prompt | prefix | adapter
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: str = "q_proj,v_proj"  # comma-separated names, or all-linear
    use_rslora: bool = False
    num_virtual_tokens: int = 20  # prompt / prefix tuning
    bottleneck: int = 64  # bottleneck adapters
    packing: bool = True  # (prompt/prefix tuning never pack: the prefix is per sequence)
    system: str | None = None  # system prompt; None: the template's default
    # A preset (chatml | llama3 | zephyr) or a JSON file of ChatTemplate's fields; None: the
    # model's own. The trained model or adapter carries it (generate/chat then use it).
    chat_template: str | None = None
    max_examples: int = 0  # 0: all
    val_examples: int = 64  # held out from the training file for val loss (bundled: test split)

    def peft_options(self) -> dict[str, Any]:
        if self.peft in ("lora", "dora", "qlora"):
            tm: list[str] | str = self.target_modules
            if tm != "all-linear":
                tm = [t.strip() for t in tm.split(",") if t.strip()]
            return {"r": self.lora_r, "lora_alpha": self.lora_alpha,
                    "lora_dropout": self.lora_dropout, "target_modules": tm,
                    "use_rslora": self.use_rslora}
        if self.peft in ("prompt", "prefix"):
            return {"num_virtual_tokens": self.num_virtual_tokens}
        if self.peft == "adapter":
            return {"bottleneck": self.bottleneck}
        return {}
