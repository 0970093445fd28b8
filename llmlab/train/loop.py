"""The one training loop. Algorithms are losses.

Pretraining, SFT, DPO, PPO, ... each give the `Trainer` a batch source and a
`loss_fn(model, batch) -> (loss, metrics)`; accumulation, mixed precision, compile, DDP/FSDP,
checkpoints, exact resume, the NaN guard, logging and progress live here once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn
from tqdm import tqdm

from llmlab.model.transformer import checkpoint_blocks
from llmlab.train import checkpoint as ckpt
from llmlab.train.compiling import compile_model
from llmlab.train.config import TrainConfig
from llmlab.train.distributed import (
    Dist,
    barrier,
    full_state,
    gather_objects,
    load_full_state,
    mean,
    to_device,
    unwrap,
    wrap,
)
from llmlab.train.machine import StopOnSigterm, device_name, keep_freed_memory
from llmlab.train.optim import autocast_dtype, lr_lambda, make_optimizer
from llmlab.train.runlog import RunLog
from llmlab.train.timing import PhaseTimer
from llmlab.weights.registry import build

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, Any]]]


class BatchSource(Protocol):
    """A resumable stream of micro-batches for this rank."""

    def next_batch(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/inf; nothing was saved after the last good step."""


class _Done(NamedTuple):  # what a training step leaves for its metrics record
    lr: float
    loss: torch.Tensor  # this rank's, averaged over the micro-batches
    gnorm: torch.Tensor
    extra: dict[str, float]


class Trainer:
    """Runs `cfg.max_steps` optimizer steps of `loss_fn` over `train_data` in `run_dir`.

    `export(model, dir)` writes a loadable model directory (checkpoints' model/ and final/);
    `eval_data` is a list of batches for validation; `sample_fn(model)` makes samples (texts,
    or dicts of fields) for samples.jsonl, `eval_fn(model) -> {name: value}` metrics (held-out
    task accuracy; at step 0 a record of its own), at step 0 and each evaluation; `run_info`
    is merged into run.json (for `llmlab report`); `compat`: settings a resumed run must share.
    `val_bytes_per_token` adds val_bpb (and `cfg.target_val_bpb` can end the run). Records
    carry `time/<phase>` seconds per step (batch, forward_backward, optim, step, eval; for
    RL, time/batch is the rollout); `sync_timing` makes them exact on GPU (benchmarks)."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        run_dir: str | Path,
        train_data: BatchSource,
        loss_fn: LossFn,
        *,
        dist: Dist,
        export: Callable[[nn.Module, Path], None],
        eval_data: Iterable[Any] | None = None,
        sample_fn: Callable[[nn.Module], list[str] | list[dict[str, Any]]] | None = None,
        eval_fn: Callable[[nn.Module], dict[str, Any]] | None = None,
        groups: list[dict[str, Any]] | None = None,
        run_info: dict[str, Any] | None = None,
        compat: dict[str, Any] | None = None,
        sync_timing: bool = False,
        val_bytes_per_token: float | None = None,
    ) -> None:
        cfg.validate()
        self.cfg, self.dist, self.run_dir = cfg, dist, Path(run_dir)
        self.train_data, self.loss_fn, self.export = train_data, loss_fn, export
        self.eval_data = list(eval_data) if eval_data is not None else []
        self.sample_fn, self.eval_fn = sample_fn, eval_fn
        self.val_bytes_per_token = val_bytes_per_token  # val loss / ln 2 / this = val bpb
        if cfg.target_val_bpb and not (val_bytes_per_token and self.eval_data and cfg.eval_every):
            raise ValueError("target_val_bpb: needs a val split with byte counts, eval_every > 0")
        self.compat = {"world": dist.world, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len,
                       "grad_accum": cfg.grad_accum, "seed": cfg.seed,
                       "optimizer": cfg.optimizer, **(compat or {})}
        self.device = dist.device
        if self.device.type == "cpu":
            keep_freed_memory()
        self.raw = model.to(self.device)
        checkpoint_blocks(self.raw, cfg.checkpoint_activations)
        if cfg.compile and cfg.compile_scope == "regional":  # the blocks, in place
            compile_model(self.raw, "regional")
        self.model = wrap(self.raw, dist)
        if cfg.compile and cfg.compile_scope == "whole":
            self.model = compile_model(self.model, "whole")
        self.opt = make_optimizer(self.raw, cfg, self.device, groups)
        self.params = [p for g in self.opt.param_groups for p in g["params"]]
        # A fused AdamW can skip a non-finite step itself (see the NaN guard in fit).
        self.skip_on_device = bool(self.opt.defaults.get("fused"))
        schedule = lr_lambda(cfg.warmup_steps, cfg.max_steps, cfg.schedule, cfg.min_lr_ratio,
                             cfg.cooldown)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule)
        self.autocast_dtype = autocast_dtype(cfg.precision, self.device)
        self.step, self.tokens, self.best_val = 0, 0, math.inf
        self.train_time = 0.0  # seconds spent training, not evaluating or saving
        self.run_info = run_info or {}
        self.log = RunLog(self.run_dir, dist.is_main)
        self.sync_timing = sync_timing  # exact time/* per phase on GPU, at a cost (PhaseTimer)
        self.unchecked: list[tuple] = []  # (step, lr, loss, grad norm, non-finite), see _check

    def _log(self, rec: dict[str, Any]) -> None:  # a subclass may add to a record first
        self.log.metrics(rec)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def evaluate(self) -> float:
        """Mean loss over `eval_data`, averaged over ranks."""
        self.model.eval()
        total = torch.zeros((), device=self.device)
        with torch.no_grad(), self._autocast():
            for batch in self.eval_data:
                loss, _ = self.loss_fn(self.model, to_device(batch, self.device))
                total += loss.detach().float()
        self.model.train()
        return float(mean(total / max(1, len(self.eval_data)), self.dist).item())

    def save_checkpoint(self, val_loss: float | None) -> None:
        msd, osd = full_state(self.model, self.opt, self.dist)
        rngs = gather_objects(ckpt.rng_state(), self.dist)  # every rank's generators
        if self.dist.is_main:
            state = {
                "step": self.step, "tokens": self.tokens, "best_val": self.best_val,
                "optimizer": osd, "scheduler": self.sched.state_dict(),
                "data": self.train_data.state_dict(), "rng": rngs,
                "config": dataclasses.asdict(self.cfg), "compat": self.compat,
                "train_time": self.train_time,
            }
            meta = {"step": self.step, "val_loss": val_loss, "tokens": self.tokens}
            path = ckpt.step_dir(self.run_dir, self.step)
            ckpt.save(path, state, meta, lambda d: self.export_state(msd, d))
            ckpt.prune(self.run_dir, self.cfg.keep_last)
        barrier(self.dist)  # nobody runs ahead of a checkpoint that may be needed

    def export_state(self, msd: dict[str, torch.Tensor], out: Path) -> None:
        if self.dist.fsdp and self.dist.enabled:
            model = build(unwrap(self.raw).cfg, msd, str(out))  # a plain CPU copy
        else:
            model = unwrap(self.raw)
        self.export(model, out)

    def resume(self) -> bool:
        found = ckpt.list_checkpoints(self.run_dir)
        if not found:
            return False
        step, path = found[-1]
        state = ckpt.load_trainer_state(path)
        # Checkpoints from before the optimizer switch were all AdamW's.
        ckpt.check_compatible({"optimizer": "adamw", **state.get("compat", {})}, self.compat,
                              path)
        msd = ckpt.load_model_weights(path)
        load_full_state(self.model, self.opt, msd, state["optimizer"], self.dist)
        self.sched.load_state_dict(state["scheduler"])
        self.train_data.load_state_dict(state["data"])
        ckpt.set_rng_state(state["rng"][self.dist.rank])
        self.step, self.tokens, self.best_val = state["step"], state["tokens"], state["best_val"]
        self.train_time = state.get("train_time", 0.0)
        self.log.trim(self.step)  # the records after the checkpoint are redone from here
        return True

    def fit(self) -> dict[str, Any]:
        """Each optimizer step: batches, forward/backward, the update; then, when due,
        evaluation, the metrics record and a checkpoint."""
        cfg = self.cfg
        self._start()
        bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (cfg.progress and self.dist.is_main))
        times = PhaseTimer(self.device if self.sync_timing else None)
        t_last, tok_last, steps_since = time.perf_counter(), self.tokens, 0
        val_loss: float | None = None
        reached = False
        if self.step == 0 and cfg.eval_every:
            self._samples()  # what the untrained model writes: the start of the story
            if self.eval_fn is not None:  # the starting model's
                self._log({"step": 0, "tokens": 0, **(self._on_main(self.eval_fn) or {})})
        self.model.train()
        stopping = StopOnSigterm(enabled=not self.dist.enabled)
        try:
            while self.step < cfg.max_steps:
                with times("step"):
                    done = self._train_step(times)
                bar.update(1)
                steps_since += 1
                evaluate = cfg.eval_every and (self.step % cfg.eval_every == 0
                                               or self.step == cfg.max_steps)
                save = (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) \
                    or self.step == cfg.max_steps
                if stopping.requested:  # keep this step: log it and checkpoint it below
                    evaluate, save = False, True
                if not (self.step % max(1, cfg.log_every) == 0 or evaluate or save
                        or self.step == 1):
                    continue
                self._check()
                rec = self._record(done, times.per_step(steps_since))  # waits for the step
                self.train_time += (spent := time.perf_counter() - t_last)
                rec["tok_per_s"] = tps = (self.tokens - tok_last) / max(spent, 1e-9)
                rec["train_time_s"] = self.train_time
                val_loss = None
                if evaluate and (self.eval_data or self.eval_fn):
                    with times("eval"):
                        val_loss = self.evaluate() if self.eval_data else None
                        self._samples()
                        rec.update(self._on_main(self.eval_fn) or {})
                    if val_loss is not None:
                        self.best_val = min(self.best_val, val_loss)
                        rec.update(val_loss=val_loss, val_ppl=math.exp(min(val_loss, 50.0)))
                        save = (reached := self._bpb(rec, val_loss)) or save
                    rec["time/eval"] = times.take("eval")
                self._log(rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
                if save:
                    self.save_checkpoint(val_loss)
                steps_since = 0
                t_last, tok_last = time.perf_counter(), self.tokens  # exclude eval/save time
                if stopping.requested or reached:
                    break
        finally:
            stopping.restore()
            bar.close()
            self.log.close()
        if not stopping.requested:
            self._finish()
        return {"step": self.step, "tokens": self.tokens, "val_loss": val_loss,
                "best_val": self.best_val, "stopped": stopping.requested,
                "target_reached": reached, "train_time_s": self.train_time}

    def _bpb(self, rec: dict[str, Any], val_loss: float) -> bool:
        """Add val_bpb to `rec`; True (with the time and tokens it took) at the target."""
        if not self.val_bytes_per_token:
            return False
        rec["val_bpb"] = bpb = val_loss / math.log(2) / self.val_bytes_per_token
        if bpb > self.cfg.target_val_bpb:  # a target of 0 is never reached
            return False
        rec.update(target_reached=True, time_to_target_s=self.train_time,
                   tokens_to_target=self.tokens)
        return True

    def _start(self) -> None:
        """Resume or start fresh, and write run.json."""
        cfg, d = self.cfg, self.dist
        if d.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        found = ckpt.list_checkpoints(self.run_dir)
        if found and not cfg.resume:  # a fresh run would mix its checkpoints with these
            raise ValueError(f"{self.run_dir} already has checkpoints (latest step "
                             f"{found[-1][0]}): pass --resume to continue it, or use a new --out")
        resumed = cfg.resume and self.resume()
        if not resumed:
            torch.manual_seed(cfg.seed + d.rank)  # dropout streams differ per rank
            self.log.fresh()
        if d.is_main:
            info = {**self.run_info, "world": d.world, "device": str(self.device),
                    "device_name": device_name(self.device), "resumed_at": self.step,
                    "threads": torch.get_num_threads()}
            (self.run_dir / "run.json").write_text(json.dumps(info, indent=1) + "\n")
        if cfg.tensorboard:
            self.log.open_tensorboard()

    def _train_step(self, times: PhaseTimer) -> _Done:
        """One optimizer step over `grad_accum` micro-batches."""
        cfg = self.cfg
        lr = self.opt.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=self.device)
        step_tokens = 0
        extra: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            with times("batch"):
                batch = self._next_batch()
            with times("forward_backward"):
                loss, metrics = self._forward_backward(batch, micro == cfg.grad_accum - 1)
            loss_sum += loss
            step_tokens += int(metrics.pop("tokens", 0))
            for k, v in metrics.items():
                extra[k] = extra.get(k, 0.0) + float(v) / cfg.grad_accum
        local_loss = loss_sum / cfg.grad_accum
        with times("optim"):
            gnorm = self._optimizer_step(local_loss, lr)
        self.step += 1
        self.tokens += step_tokens * self.dist.world
        return _Done(lr, local_loss, gnorm, extra)

    def _next_batch(self) -> Any:
        # Under the loss's autocast: an RL rollout then samples in bf16 on GPU and its old
        # log-probs match the precision the loss recomputes them in.
        with self._autocast():
            return to_device(self.train_data.next_batch(), self.device)

    def _forward_backward(self, batch: Any, last: bool) -> tuple[torch.Tensor, dict[str, Any]]:
        """The micro-batch's loss (detached) and metrics; its gradient is accumulated."""
        sync = contextlib.nullcontext()
        if self.dist.enabled and not last and hasattr(self.model, "no_sync"):
            sync = self.model.no_sync()  # all-reduce once, on the last micro-batch
        with sync:
            with self._autocast():
                loss, metrics = self.loss_fn(self.model, batch)
            (loss / self.cfg.grad_accum).backward()
        return loss.detach().float(), metrics

    def _optimizer_step(self, loss: torch.Tensor, lr: float) -> torch.Tensor:
        """Clip, guard against NaN, step the optimizer and the schedule; the grad norm."""
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        if hasattr(gnorm, "full_tensor"):  # FSDP2: a DTensor over the ranks
            gnorm = gnorm.full_tensor()
        # The NaN guard. A fused AdamW skips a non-finite step on the device (`found_inf`,
        # as under GradScaler), so the host does not wait for the GPU every step; the check
        # runs at the next log/eval/checkpoint, before anything is written. Otherwise it
        # waits here.
        bad = ~(torch.isfinite(gnorm) & torch.isfinite(loss))
        self.unchecked.append((self.step + 1, lr, loss, gnorm, bad))
        if self.skip_on_device:
            self.opt.found_inf = bad.float()  # type: ignore[attr-defined]
        else:
            self._check()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        return gnorm

    def _record(self, done: _Done, times: dict[str, float]) -> dict[str, Any]:
        """The metrics.jsonl row of the step just done (the loss averaged over ranks)."""
        return {"step": self.step, "loss": float(mean(done.loss, self.dist)), "lr": done.lr,
                "tokens": self.tokens, "grad_norm": float(done.gnorm), **done.extra, **times}

    def _finish(self) -> None:  # the final model; under FSDP every rank joins the gather
        if self.dist.is_main:
            msd, _ = full_state(self.model, None, self.dist)
            self.export_state(msd, self.run_dir / "final")
        elif self.dist.fsdp:
            full_state(self.model, None, self.dist)

    def _check(self) -> None:
        """Raise TrainingDiverged for the first step in `unchecked` whose loss or grad norm was
        not finite (its update was not applied); then forget them. One host sync."""
        unchecked = self.unchecked
        if not unchecked:
            return
        # Averaged over ranks, so that every rank stops at the same step.
        flags = mean(torch.stack([u[4] for u in unchecked]).float(), self.dist).cpu() > 0
        if flags.any():
            step, lr, loss, gnorm, _ = unchecked[int(flags.int().argmax())]
            last_good = ckpt.list_checkpoints(self.run_dir)
            where = str(last_good[-1][1]) if last_good else "none written yet"
            raise TrainingDiverged(
                f"step {step}: loss {float(loss)}, grad norm {float(gnorm)} (lr {lr:.3g}); "
                f"stopped before the update, last good checkpoint: {where}. Try a lower "
                "--lr, more --warmup-steps or --grad-clip")
        unchecked.clear()

    def _on_main(self, fn: Callable[[nn.Module], Any]) -> Any:
        """fn(model), eval mode, no grad, on the main rank (all under FSDP); else None."""
        if fn is None or not (self.dist.is_main or (self.dist.fsdp and self.dist.enabled)):
            return None
        model = self.model if self.dist.fsdp else unwrap(self.raw)
        model.eval()
        with torch.no_grad(), self._autocast():
            out = fn(model)
        model.train()
        return out

    def _samples(self) -> None:
        texts = self._on_main(self.sample_fn)
        if texts is not None:
            self.log.samples(self.step, texts, self.cfg.progress)
