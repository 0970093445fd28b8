"""The speedrun race: the baseline (`tiny-cpu`) and the recipe (`speedrun-cpu`) pretrained on
the same data to the same target validation bits per byte, each a real playground run (the
CLI's `llmlab pretrain`, the shared Trainer, its own run dir).

The two run in turn, not at once, so that the race is fair on any machine:
- each run has the machine to itself with the server's run threads, as
  benchmarks/speedrun_cpu.py runs them; at once, they would share cores and memory
  bandwidth, and whichever is left alone after the other stops would speed up;
- the second run reads the data the first prepared (the RunManager caches it by inputs and
  tokenizer): the same tokens, the same validation split, no tokenizer trained twice;
- it needs one free run slot, so a server with the default --max-runs 1 can race.
The chart's x axis is each run's own training seconds (evaluation excluded, metrics.jsonl
`train_time_s`), so the two curves overlay as if both had started together.

ROOT/_races/<race id>.json records each race (its settings, its two runs, its status); a
server that restarts mid-race cannot start the second run, and says so."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.lab import options as opts
from llmlab.lab.runs import ACTIVE, RunBusy, RunManager
from llmlab.train.speedrun import BASELINE, EVAL_EVERY, RECIPE, TARGET_BPB, check_target
from llmlab.weights.io import atomic_write_bytes

RACES = "_races"  # under the runs root; "_" keeps it out of the run list


@dataclass
class Lane:
    role: str  # baseline | recipe
    preset: str
    run: str | None = None  # its run id, once started


@dataclass
class RaceRecord:
    id: str
    target_val_bpb: float
    eval_every: int
    max_steps: int | None  # None: each preset's own
    seed: int
    created: float
    status: str = "running"  # running | stopping | finished | stopped | failed
    error: str | None = None
    lanes: list[Lane] = field(default_factory=list)


def lane_options(preset: str, race: RaceRecord) -> dict[str, Any]:
    """One run's options: the preset's model, data and recipe, the race's target and
    evaluation interval. No samples or step checkpoints (both cost wall time, not training
    time), as the benchmark runs them."""
    o: dict[str, Any] = {"preset": preset, "target_val_bpb": race.target_val_bpb,
                         "eval_every": race.eval_every, "seed": race.seed, "sample_tokens": 0,
                         "ckpt_every": 0, "tensorboard": False}
    if race.max_steps is not None:
        o["max_steps"] = race.max_steps
    return o


def _count(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{name}: expected an integer in [{lo}, {hi}], got {v!r}")
    return v


class RaceManager:
    def __init__(self, runs: RunManager, poll_s: float = 0.5) -> None:
        self.runs, self.poll_s = runs, poll_s
        self.dir = runs.root / RACES
        self.dir.mkdir(exist_ok=True)
        self._lock = threading.RLock()
        self._races: dict[str, RaceRecord] = {}
        for p in self.dir.glob("*.json"):
            self._adopt(p)

    def start(self, target_val_bpb: float = TARGET_BPB, eval_every: int = EVAL_EVERY,
              max_steps: int | None = None, seed: int = 0) -> dict[str, Any]:
        """Start the baseline now (RunBusy when no run slot is free) and the recipe when it
        ends. Every field and both runs' options are checked before anything starts."""
        race = RaceRecord(f"race-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}",
                          check_target(target_val_bpb), _count("eval_every", eval_every, 1,
                                                               100_000),
                          None if max_steps is None else _count("max_steps", max_steps, 1,
                                                                1_000_000),
                          _count("seed", seed, 0, 2**31 - 1), time.time(),
                          lanes=[Lane("baseline", BASELINE), Lane("recipe", RECIPE)])
        for lane in race.lanes:  # the CLI's own checks, as RunManager.start makes them
            opts.validate("pretrain", opts.to_flags(lane_options(lane.preset, race)),
                          self.dir / race.id)
        with self._lock:
            going = [r.id for r in self._races.values() if r.status in ACTIVE]
            if going:
                raise RunBusy(going)
            self._start_lane(race, race.lanes[0])
            self._races[race.id] = race
            self._save(race)
        threading.Thread(target=self._drive, args=(race,), daemon=True,
                         name=f"race-{race.id}").start()
        return self.get(race.id)

    def stop(self, race_id: str) -> dict[str, Any]:
        """Stop the race: its running run now (it checkpoints), and the next never starts."""
        with self._lock:
            race = self._record(race_id)
            if race.status not in ACTIVE:
                raise ValueError(f"race: {race_id} is not running (status {race.status})")
            self._set(race, "stopping")
            for lane in race.lanes:
                if lane.run and self.runs.get(lane.run)["status"] == "running":
                    with contextlib.suppress(ValueError):  # it ended meanwhile
                        self.runs.stop(lane.run)
        return self.get(race_id)

    def get(self, race_id: str) -> dict[str, Any]:
        with self._lock:
            race = self._record(race_id)
            out = dataclasses.asdict(race)
        for lane in out["lanes"]:
            try:
                run = self.runs.get(lane["run"]) if lane["run"] else None
            except KeyError:  # its run dir was deleted
                run = {"status": "deleted", "step": 0}
            lane["status"] = run["status"] if run else "waiting"
            lane["step"] = run["step"] if run else 0
        return out

    def latest(self) -> dict[str, Any] | None:
        with self._lock:
            if not self._races:
                return None
            newest = max(self._races.values(), key=lambda r: r.created)
        return self.get(newest.id)

    # ------------------------------------------------------------------ internals

    def _drive(self, race: RaceRecord) -> None:
        try:
            self._run_lanes(race)
        except Exception as e:  # a run dir deleted mid-race, a full disk: say so, never hang
            with self._lock:
                race.error = f"{type(e).__name__}: {e}"
                self._set(race, "failed")

    def _run_lanes(self, race: RaceRecord) -> None:
        """Wait for each run to end; then start the next, or end the race."""
        for i, lane in enumerate(race.lanes):
            while lane.run is None:
                with self._lock:
                    if race.status != "running":
                        break
                    try:
                        self._start_lane(race, lane)
                        self._save(race)
                    except RunBusy:  # another page's run took the slot: wait for it
                        pass
                    except (ValueError, OSError) as e:
                        race.error = f"{lane.role} {lane.preset} did not start: {e}"
                        self._set(race, "failed")
                        return
                if lane.run is None:
                    time.sleep(self.poll_s)
            if lane.run is None:  # stopped before it started
                break
            while (run := self.runs.get(lane.run))["status"] in ACTIVE:
                time.sleep(self.poll_s)
            if run["status"] == "failed":
                with self._lock:
                    race.error = f"{lane.role} {lane.preset} failed: {run['error']}"
                    self._set(race, "failed")
                return
            if run["status"] == "stopped" and i + 1 < len(race.lanes):
                break
        with self._lock:
            stopped = race.status == "stopping" or any(
                self.runs.get(ln.run)["status"] == "stopped" for ln in race.lanes if ln.run)
            self._set(race, "stopped" if stopped or race.lanes[-1].run is None
                      else "finished")

    def _start_lane(self, race: RaceRecord, lane: Lane) -> None:
        """Start `lane`'s run (RunBusy when no run slot is free)."""
        lane.run = self.runs.start("pretrain", lane_options(lane.preset, race),
                                   f"{race.id}: {lane.role} {lane.preset}")["id"]

    def _record(self, race_id: str) -> RaceRecord:
        if race_id not in self._races:
            raise KeyError(race_id)
        return self._races[race_id]

    def _set(self, race: RaceRecord, status: str) -> None:
        race.status = status
        self._save(race)

    def _save(self, race: RaceRecord) -> None:
        atomic_write_bytes(self.dir / f"{race.id}.json",
                           (json.dumps(dataclasses.asdict(race), indent=1) + "\n").encode())

    def _adopt(self, path: Path) -> None:
        """A race of an earlier server: one it left going can't start its next run."""
        try:
            d = json.loads(path.read_text())
            race = RaceRecord(**{**d, "lanes": [Lane(**ln) for ln in d["lanes"]]})
        except (OSError, ValueError, TypeError, KeyError):
            return
        if race.status in ACTIVE:
            race.error = "the server stopped during this race; start a new one"
            self._set(race, "failed")
        self._races[race.id] = race
