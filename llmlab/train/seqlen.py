"""Sequence-length warmup: pretraining starts on short sequences and grows them to seq_len.

Li, Zhang and He, "The Stability-Efficiency Dilemma: Investigating Sequence Length Warmup for
Training GPT Models" (NeurIPS 2022): what the first steps learn (token and short-range
statistics) needs little context, so short sequences buy the same early progress for fewer
tokens of compute, and steady the high-lr start. modded-nanogpt grows its attention window
over training for the same reason; on a CPU a shorter sequence is simply a cheaper step.

Why a sequence-length schedule and not a batch-size ramp: `PretrainBatches` addresses its
samples by one counter. Cropping each sampled window to a prefix keeps that addressing, so
the data order, the DDP split and the resume state (the counter) stay as they are, and the
length is a pure function of the step. A batch-size ramp changes how many samples each step
takes, so where a step starts reading becomes a sum over the schedule, on every rank. The
cost of cropping: the rest of each window goes unseen until the window's next epoch.
"""

from __future__ import annotations

from typing import Any

from llmlab.train.data import PretrainBatches


def seq_len_at(step: int, seq_len: int, start: int, warmup: int) -> int:
    """The training sequence length at optimizer step `step` (0-based): linear from `start`
    to `seq_len` over `warmup` steps, rounded down to a multiple of `start`, so a compiled
    model sees at most seq_len / start shapes; `seq_len` from step `warmup` on."""
    if step >= warmup:
        return seq_len
    grown = start + (seq_len - start) * step // warmup  # in [start, seq_len)
    return grown // start * start


class SeqLenWarmup:
    """A `PretrainBatches` whose micro-batches of step s are cropped to `seq_len_at(s)`
    tokens (`warmup` 0: never cropped). The step is the source's micro-batch counter over
    `grad_accum`, so resuming the counter resumes the schedule exactly."""

    def __init__(self, inner: PretrainBatches, grad_accum: int, start: int, warmup: int) -> None:
        if warmup and not 1 <= start <= inner.t:
            raise ValueError(f"seq_len_start={start} must be in [1, seq_len={inner.t}]: the "
                             "length the warmup grows from to seq_len")
        self.inner, self.grad_accum, self.start, self.warmup = inner, grad_accum, start, warmup

    def seq_len(self) -> int:
        """The length of the next micro-batch."""
        step = self.inner.counter // self.grad_accum
        return seq_len_at(step, self.inner.t, self.start, self.warmup)

    def next_batch(self) -> dict[str, Any]:
        t = self.seq_len()
        batch = self.inner.next_batch()
        if t == self.inner.t:
            return batch
        # The window's first t + 1 tokens: inputs 0..t-1 predict 1..t.
        return {k: v[:, :t].contiguous() for k, v in batch.items()}

    def state_dict(self) -> dict[str, Any]:
        return {**self.inner.state_dict(), "seq_len_warmup": self.warmup,
                "seq_len_start": self.start}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        s = dict(s)  # a checkpoint from before the warmup existed had none: 0
        saved = {"seq_len_warmup": s.pop("seq_len_warmup", 0),
                 "seq_len_start": s.pop("seq_len_start", self.start)}
        for k, mine in (("seq_len_warmup", self.warmup), ("seq_len_start", self.start)):
            if saved[k] != mine and (self.warmup or saved["seq_len_warmup"]):
                raise ValueError(f"data position was saved with {k}={saved[k]}, this run has "
                                 f"{k}={mine}; resume with the same value")
        self.inner.load_state_dict(s)
