"""Playground runs: each one is a worker process running the CLI's own command in its own
run directory, so a run started from a page is the same as one started from the shell.

    ROOT/<run id>/      what the CLI writes (config.json, metrics.jsonl, samples.jsonl,
                        checkpoints/, final/) plus lab.json (kind, options, status) and
                        worker.log (the worker's stdout and stderr)
    ROOT/_corpora/      uploaded pretraining text, by content hash

Stop sends SIGTERM: the Trainer finishes its step, checkpoints and exits; a worker still
alive after `stop_grace_s` is killed. Checkpoints are written atomically, so even a SIGKILL
leaves the last one loadable. lab.json is rewritten atomically at each change of status,
and a server that restarts reads every run back from disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.lab import options as opts
from llmlab.lab.rundir import (
    LAB_FILE,
    LOG_FILE,
    describe,
    failure_reason,
    is_done,
    is_run_dir,
    kind_of,
)
from llmlab.weights.io import atomic_write_bytes

ACTIVE = ("running", "stopping")
CORPORA = "_corpora"
DATA_CACHE = "_data"  # prepared (tokenized) pretraining data, by inputs and tokenizer


class RunBusy(RuntimeError):
    """`max_runs` runs are going already: the server answers 409, naming them."""

    def __init__(self, running: list[str]) -> None:
        super().__init__(f"a training run is already going ({', '.join(running)}); stop it "
                         "first, or start the server with a higher --max-runs")
        self.running = running


@dataclass
class RunRecord:
    """lab.json: what the run is and where it stands."""

    id: str
    kind: str
    options: dict[str, Any]
    argv: list[str]  # the CLI command, as the worker runs it
    created: float
    label: str = ""
    status: str = "running"  # running | stopping | finished | stopped | failed
    pid: int | None = None
    returncode: int | None = None
    error: str | None = None
    ended: float | None = None
    resumes: int = 0
    history: list[str] = field(default_factory=list)  # status changes, oldest first


class RunManager:
    def __init__(self, root: str | Path, max_runs: int = 1, threads: int = 1,
                 allow_paths: bool = False, stop_grace_s: float = 30.0,
                 self_url: str | None = None) -> None:
        self.root = Path(root).expanduser()
        # The server's own base URL: a judge run's judge is its /v1/chat/completions.
        self.self_url = self_url
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / CORPORA).mkdir(exist_ok=True)
        self.max_runs, self.threads, self.allow_paths = max_runs, threads, allow_paths
        self.stop_grace_s = stop_grace_s
        self._lock = threading.RLock()
        self._procs: dict[str, subprocess.Popen] = {}
        self._stopping: set[str] = set()
        self._records: dict[str, RunRecord] = {}
        self.list()  # runs of earlier servers and of the shell, read back from disk

    # ------------------------------------------------------------------ starting and stopping

    def start(self, kind: str, options: dict[str, Any], label: str = "") -> dict[str, Any]:
        """Check the options as the CLI would, then start the worker; RunBusy when full."""
        if kind not in opts.KINDS:
            raise ValueError(f"kind: expected one of {', '.join(opts.KINDS)}, got {kind!r}")
        opts.to_flags(options)  # names and value types, before anything else
        with self._lock:
            runs, corpora = self._model_runs(), self.root / CORPORA
            if not self.allow_paths:
                opts.check_paths(kind, options, runs, corpora)
            flags = opts.to_flags(opts.resolve(self._judge_url(kind, options), runs, corpora,
                                               kind))
            run_id = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
            out = self.root / run_id
            data = opts.validate(kind, flags, out)  # before anything is written
            self._check_room()
            argv = [*opts.KINDS[kind], *flags, "--out", str(out), "--threads",
                    str(self.threads), "--no-progress"]
            rec = RunRecord(run_id, kind, dict(options), argv, time.time(), label=label[:80])
            out.mkdir(parents=True)
            if data is not None and data.data is None:
                self._use_cached_data(rec, out, data)
            self._records[run_id] = rec
            self._spawn(rec, argv)
            return self.get(run_id)

    def resume(self, run_id: str) -> dict[str, Any]:
        """Continue a stopped or failed run from its latest checkpoint (the CLI's --resume)."""
        with self._lock:
            rec = self._record(run_id)
            if rec.status in ACTIVE:
                raise ValueError(f"run {run_id}: already {rec.status}")
            if rec.kind in ("eval", "judge"):
                raise ValueError(f"run {run_id}: an evaluation has no checkpoint; start it again")
            if rec.status == "finished":
                raise ValueError(f"run {run_id}: finished; start a new run to train more")
            if not rec.argv:
                raise ValueError(f"run {run_id}: started outside the playground; resume it "
                                 "with its own command plus --resume")
            self._check_room()
            rec.resumes += 1
            rec.error = rec.returncode = rec.ended = None
            self._spawn(rec, [*rec.argv, "--resume"])
            return self.get(run_id)

    def stop(self, run_id: str) -> dict[str, Any]:
        """SIGTERM now (the run checkpoints and exits), SIGKILL after the grace period."""
        with self._lock:
            rec = self._record(run_id)
            proc = self._procs.get(run_id)
            if rec.status not in ACTIVE:
                raise ValueError(f"run {run_id}: not running (status {rec.status})")
            if run_id not in self._stopping:
                self._stopping.add(run_id)
                self._set(rec, "stopping")
                if proc is not None:
                    proc.send_signal(signal.SIGTERM)
                    threading.Thread(target=self._kill_late, args=(run_id, proc),
                                     daemon=True, name=f"stop-{run_id}").start()
                elif rec.pid:  # a worker an earlier server started: _watch_pid sees it end
                    os.kill(rec.pid, signal.SIGTERM)
            return self.get(run_id)

    def close(self) -> None:
        """At server shutdown: stop every worker and wait for its checkpoint."""
        with self._lock:
            running = [r for r in self._procs if self._records[r].status in ACTIVE]
        for r in running:
            with contextlib.suppress(ValueError):  # it ended meanwhile
                self.stop(r)
        deadline = time.time() + self.stop_grace_s + 5
        for r in running:
            proc = self._procs.get(r)
            if proc is not None:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    proc.kill()

    # ------------------------------------------------------------------ reading

    def list(self) -> list[dict[str, Any]]:
        """Every run under the root, newest first: the playground's and the shell's."""
        with self._lock:
            for p in self.root.iterdir():
                if p.name not in self._records and not p.name.startswith("_") \
                        and is_run_dir(p):
                    self._records[p.name] = self._adopt(p)
            ids = sorted(self._records, key=lambda r: self._records[r].created, reverse=True)
        return [self.get(r) for r in ids if (self.root / r).is_dir()]

    def get(self, run_id: str) -> dict[str, Any]:
        rec = self._record(run_id)
        return {**dataclasses.asdict(rec), **describe(self.root / run_id, rec.kind)}

    def running(self) -> list[str]:
        with self._lock:
            return [r for r, rec in self._records.items() if rec.status in ACTIVE]

    def run_dir(self, run_id: str) -> Path:
        self._record(run_id)
        return self.root / run_id

    def save_corpus(self, text: str) -> dict[str, Any]:
        """Keep uploaded pretraining text under its hash; `upload:HASH` names it in options."""
        data = text.encode("utf-8")
        h = hashlib.sha256(data).hexdigest()[:16]
        path = self.root / CORPORA / f"{h}.txt"
        if not path.exists():
            atomic_write_bytes(path, data)
        return {"name": f"{opts.UPLOAD}{h}", "chars": len(text), "bytes": len(data)}

    # ------------------------------------------------------------------ internals

    def _record(self, run_id: str) -> RunRecord:
        with self._lock:
            if run_id not in self._records:
                path = self.root / run_id
                if "/" in run_id or run_id.startswith((".", "_")) or not is_run_dir(path):
                    raise KeyError(run_id)
                self._records[run_id] = self._adopt(path)
            return self._records[run_id]

    def _judge_url(self, kind: str, options: dict[str, Any]) -> dict[str, Any]:
        """A judge run's endpoint is this server, unless the request named one (allowed with
        local paths only) or a local judge model."""
        if kind != "judge" or options.get("judge") or options.get(opts.JUDGE_URL):
            return options
        if not self.self_url:
            raise ValueError("kind: a judge run asks this server's /v1/chat/completions, and "
                             "this server does not know its own URL")
        return {**options, opts.JUDGE_URL: self.self_url}

    def _model_runs(self) -> dict[str, Path]:
        """Runs whose model another run may start from (their run dir resolves to a model)."""
        return {r: self.root / r for r, rec in self._records.items()
                if describe(self.root / r, rec.kind).get("model")}

    def _check_room(self) -> None:
        running = self.running()
        if len(running) >= self.max_runs:
            raise RunBusy(running)

    def _spawn(self, rec: RunRecord, argv: list[str]) -> None:
        out = self.root / rec.id
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads),
               "MKL_NUM_THREADS": str(self.threads), "PYTHONUNBUFFERED": "1",
               "TQDM_DISABLE": "1"}
        with (out / LOG_FILE).open("ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "llmlab.lab.worker", *argv],
                                    stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=out, start_new_session=True)
        self._procs[rec.id] = proc
        self._stopping.discard(rec.id)
        rec.pid = proc.pid
        self._set(rec, "running")
        threading.Thread(target=self._watch, args=(rec, proc), daemon=True,
                         name=f"run-{rec.id}").start()

    def _watch(self, rec: RunRecord, proc: subprocess.Popen) -> None:
        rc = proc.wait()
        with self._lock:
            if self._procs.get(rec.id) is not proc:
                return
            del self._procs[rec.id]
            stopped = rec.id in self._stopping
            self._stopping.discard(rec.id)
            rec.returncode, rec.ended, rec.pid = rc, time.time(), None
            self._keep_data(rec)
            if rc == 0 and is_done(self.root / rec.id) and not stopped:
                self._set(rec, "finished")
            elif stopped or (rc == 0 and "stopped by SIGTERM" in self._log_tail(rec.id)):
                self._set(rec, "stopped")
            else:
                rec.error = failure_reason(self.root / rec.id, rc)
                self._set(rec, "failed")

    def _use_cached_data(self, rec: RunRecord, out: Path, data: Any) -> None:
        """Tokenized data is the same for the same inputs and tokenizer: a run whose data was
        prepared before links to it (a BPE trained again and the corpus encoded again are
        seconds before the first loss point); its own is kept for the next run (_watch)."""
        key = hashlib.sha256(json.dumps([data.inputs, data.tokenizer, data.val_fraction])
                             .encode()).hexdigest()[:16]
        rec.options = {**rec.options, "_data_key": key}
        cached = self.root / DATA_CACHE / key
        if (cached / "manifest.json").exists():
            (out / "data").symlink_to(cached, target_is_directory=True)

    def _keep_data(self, rec: RunRecord) -> None:
        key = rec.options.get("_data_key")
        own, cached = self.root / rec.id / "data", self.root / DATA_CACHE / str(key)
        if key and not own.is_symlink() and (own / "manifest.json").exists() \
                and not cached.exists():
            cached.parent.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):  # another run kept the same data first
                own.rename(cached)
                own.symlink_to(cached, target_is_directory=True)

    def _kill_late(self, run_id: str, proc: subprocess.Popen) -> None:
        try:
            proc.wait(timeout=self.stop_grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()  # mid-checkpoint is safe: checkpoints are renamed into place

    def _log_tail(self, run_id: str) -> str:
        try:
            with (self.root / run_id / LOG_FILE).open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _set(self, rec: RunRecord, status: str) -> None:
        rec.status = status
        rec.history.append(f"{time.strftime('%H:%M:%S')} {status}")
        path = self.root / rec.id / LAB_FILE
        if path.parent.is_dir():
            atomic_write_bytes(path, (json.dumps(dataclasses.asdict(rec), indent=1) + "\n")
                               .encode())

    def _adopt(self, path: Path) -> RunRecord:
        """A run found on disk: a playground run from an earlier server, or a shell run."""
        try:
            rec = RunRecord(**json.loads((path / LAB_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            kind = kind_of(path)
            done = is_done(path)
            return RunRecord(path.name, kind, {}, [], path.stat().st_mtime,
                             status="finished" if done else "stopped")
        if rec.status in ACTIVE:
            # Its server went away without stopping it. Still alive: follow it by its pid.
            if rec.pid and _alive(rec.pid, str(path)):
                threading.Thread(target=self._watch_pid, args=(rec,), daemon=True).start()
            else:
                rec.pid = None
                if is_done(path):
                    self._set(rec, "finished")
                else:
                    rec.error = ("the server stopped while this run was training; resume "
                                 "continues from its last checkpoint")
                    self._set(rec, "failed")
        return rec

    def _watch_pid(self, rec: RunRecord) -> None:
        while rec.pid and _alive(rec.pid, str(self.root / rec.id)):
            time.sleep(1.0)
        with self._lock:
            rec.pid, rec.ended = None, time.time()
            if is_done(self.root / rec.id):
                self._set(rec, "finished")
            else:
                self._set(rec, "stopped")


def _alive(pid: int, marker: str) -> bool:
    """Whether `pid` is still our worker (a reused pid would not name the run dir)."""
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
