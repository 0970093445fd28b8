"""Reading a run directory as the playground shows it: where it stands, its records as they
arrive, why it failed, and the model it holds (a checkpoint, the final model, or an adapter
on its base)."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmlab.weights.rundir import CKPT_DIR, list_checkpoints, run_model_dir

LAB_FILE = "lab.json"
LOG_FILE = "worker.log"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
REPORT = "report.json"  # an eval run's (llmlab eval --out DIR)
TERMINAL = ("finished", "stopped", "failed")


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in (LAB_FILE, "run.json",
                                                                "config.json", METRICS))


def read_json(path: Path) -> dict[str, Any]:
    try:
        out = json.loads(path.read_text())
        return out if isinstance(out, dict) else {}
    except (OSError, ValueError):
        return {}


def last_record(path: Path) -> dict[str, Any] | None:
    """The last complete line of a JSONL file, reading only its end."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            lines = f.read().split(b"\n")
    except OSError:
        return None
    for line in reversed(lines[:-1]):  # the part after the last newline may be half-written
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def base_section(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's config.json that names its base model: sft's or align's."""
    return cfg.get("sft") or cfg.get("align") or {}


def is_adapter(run_dir: Path) -> bool:
    sec = base_section(read_json(run_dir / "config.json"))
    return sec.get("peft", "none") != "none" or bool(sec.get("adapter"))


def kind_of(run_dir: Path) -> str:
    """A run's kind from its config.json, for runs the shell started."""
    cfg = read_json(run_dir / "config.json")
    return cfg.get("algo") or ("sft" if "sft" in cfg else "pretrain")


def describe(run_dir: Path, kind: str) -> dict[str, Any]:
    """Progress and what the run holds: step of max_steps, the last losses, its checkpoints,
    and whether pages can load it (`model`: the name they use, `run:ID`)."""
    cfg = read_json(run_dir / "config.json")
    last = last_record(run_dir / METRICS) or {}
    ckpts = [s for s, _ in list_checkpoints(run_dir)]
    final = (run_dir / "final").is_dir()
    adapter = is_adapter(run_dir)
    return {
        "step": last.get("step", 0),
        "max_steps": cfg.get("train", {}).get("max_steps"),
        "loss": last.get("loss"),
        "tokens": last.get("tokens"),
        "checkpoints": ckpts,
        "final": final,
        "model": f"run:{run_dir.name}" if final or ckpts else None,
        "adapter": adapter,
        "base": base_section(cfg).get("model"),
        "preset": cfg.get("preset"),
        "info": read_json(run_dir / "run.json"),  # what the library counted (trainable, memory)
    }


def model_dir(run_dir: Path, step: int | None = None) -> Path:
    """The model of a run: checkpoint `step`, else the final model, else the best or latest
    checkpoint (a run stopped early). An SFT adapter run gives its adapter directory."""
    if step is not None:
        path = run_dir / CKPT_DIR / f"step_{step:07d}" / "model"
        if not path.is_dir():
            have = [s for s, _ in list_checkpoints(run_dir)]
            raise ValueError(f"model: run {run_dir.name} has no checkpoint at step {step}; "
                             f"it has {have or 'none'}")
        return path
    if is_adapter(run_dir):
        if (run_dir / "final").is_dir():
            return run_dir / "final"
        found = list_checkpoints(run_dir)
        if not found:
            raise ValueError(f"model: run {run_dir.name} has no adapter yet")
        return found[-1][1] / "model"
    try:
        return run_model_dir(run_dir)
    except FileNotFoundError:
        raise ValueError(f"model: run {run_dir.name} has no model yet (no checkpoint and "
                         "no final model)") from None


def base_and_adapter(run_dir: Path, step: int | None = None) -> tuple[str, Path | None]:
    """What loads a run's model (or its checkpoint `step`) by name: (its model dir, None), or
    for an adapter run (its base model, its adapter dir), as load_run loads them."""
    if is_adapter(run_dir):
        base = str(base_section(read_json(run_dir / "config.json"))["model"])
        return base, model_dir(run_dir, step)
    return (str(run_dir) if step is None else str(model_dir(run_dir, step))), None


def is_done(run_dir: Path) -> bool:
    """A training run's final model, or an eval run's report, is written last."""
    return (run_dir / "final").is_dir() or (run_dir / REPORT).is_file()


def load_run(run_dir: Path, step: int | None = None) -> Any:
    """A run's model as `llmlab.load` gives it; an adapter is merged into its base."""
    from llmlab.lm import load, load_lm

    path = model_dir(run_dir, step)
    if is_adapter(run_dir):
        base = base_section(read_json(run_dir / "config.json"))["model"]
        lm = load_lm(base, adapter=str(path))
    else:
        lm = load(str(path))
    lm.name = run_dir.name + (f"@{step}" if step is not None else "")
    return lm


def failure_reason(run_dir: Path, returncode: int) -> str:
    """The CLI's `error: ...` line, else a traceback's last line, else how the worker died."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return (f"the worker was killed by {name}; the run directory keeps its last "
                "checkpoint (resume continues from it)")
    try:
        text = (run_dir / LOG_FILE).read_text(errors="replace")[-20000:]
    except OSError:
        text = ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error: "):
            return ln[7:]
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_.]+(Error|Exception|Diverged)\b", ln):
            return ln
    return f"the worker exited with code {returncode}" + (f": {lines[-1]}" if lines else "")


class _Tail:
    """New complete lines of a growing JSONL file; notices when it was rewritten shorter
    (a resumed run trims the records after its checkpoint)."""

    def __init__(self, path: Path) -> None:
        self.path, self.pos, self.buf = path, 0, b""

    def read(self) -> tuple[bool, list[dict[str, Any]]]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return False, []
        reset = size < self.pos
        if reset:
            self.pos, self.buf = 0, b""
        if size == self.pos:
            return reset, []
        with self.path.open("rb") as f:
            f.seek(self.pos)
            data = f.read(size - self.pos)
        self.pos += len(data)
        *lines, self.buf = (self.buf + data).split(b"\n")
        out = []
        for ln in lines:
            try:
                out.append(json.loads(ln))
            except ValueError:
                continue
        return reset, out


class Follower:
    """The run as events: "status" first and at each change, then "metrics" and "sample" for
    every record (the whole history first, so a reloaded page redraws everything), "reset"
    when a resume rewrote the records, and "end" once the run is over and every record was
    sent. `poll()` never waits, so an async server can follow many runs on one thread."""

    def __init__(self, run_dir: Path, status: Callable[[], dict[str, Any]]) -> None:
        self.status, self.done, self.last = status, False, ""
        self.tails = {"metrics": _Tail(run_dir / METRICS), "sample": _Tail(run_dir / SAMPLES)}

    def poll(self) -> list[tuple[str, dict[str, Any]]]:
        st = self.status()  # before reading, so the records of a run that just ended are read
        out: list[tuple[str, dict[str, Any]]] = []
        if not self.last:
            out.append(("status", st))
            self.last = st["status"]
        for event, tail in self.tails.items():
            reset, recs = tail.read()
            if reset:
                out.append(("reset", {"what": event}))
            out += [(event, r) for r in recs]
        if st["status"] != self.last:
            out.append(("status", st))
            self.last = st["status"]
        if st["status"] in TERMINAL:
            out.append(("end", st))
            self.done = True
        return out
