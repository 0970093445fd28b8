"""The models behind the server: loaded once, lazily, and used under one fair lock.

Two CPU cores serve everyone, so forward passes are serialized: running two at once would
only make each slower. Generation requests (chat, RAG answers, /v1) don't queue for the
lock one by one: they go to one `Batcher`, which decodes them together and takes the lock
once per step. The lock is granted in arrival order, so a short call (an attention map, an
embedding) waits for at most the step in progress, never for a whole generation.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from llmlab.lru import LRU
from llmlab.server.memory import bound_malloc

log = logging.getLogger("llmlab.server")


@dataclass
class ServerConfig:
    chat_model: str = "smollm2-135m-instruct"
    embed_model: str = "minilm-l6-v2"
    fast_decode: bool = True  # generate with a weight-only int8 copy (~2.5x faster on CPU)
    # Accept any directory on the server's disk as a model or tokenizer in a request. Off, a
    # request names a registered model or a --model-dir run: paths read the server's disk.
    allow_local_models: bool = False
    max_text_chars: int = 2000  # characters of text a playground request may send
    max_attention_tokens: int = 64  # tokens the attention page explains (maps grow as n^2)
    max_new_tokens: int = 512  # generation cap for chat, RAG answers and /v1
    max_upload_bytes: int = 512 * 1024  # one uploaded RAG document
    max_body_bytes: int = 2 * 1024 * 1024  # any request body (an upload plus its form)
    max_session_docs: int = 20  # documents in one RAG upload session
    max_client_sessions: int = 8  # RAG upload sessions one client address may hold at once
    max_build_chunks: int = 4000  # chunks in one RAG index (the default KB: 766 at size 50)
    max_build_s: float = 300.0  # a RAG index build that takes longer is stopped
    # Local checkpoints for the attention page: `llmlab pretrain` run dirs or saved models.
    model_dirs: list[str] = field(default_factory=list)
    max_batch: int = 16  # generation requests decoded together (int8 kernel: up to 16 rows)
    max_batch_tokens: int = 16384  # rows x cache length; fp32 SmolLM2 KV: 46 KB a token
    # Caps that keep memory bounded however long the server runs:
    attention_cache: int = 8  # explain runs kept (every layer's maps, <= 64 tokens each)
    kb_cache: int = 4  # RAG indexes kept (per chunk size, and per upload session)
    max_sessions: int = 64  # upload sessions; the least recently used one goes first
    session_ttl_s: float = 3600.0  # an upload session idle this long is deleted
    max_local_models: int = 2  # local checkpoints held in memory
    tokenizer_cache: int = 8  # tokenizers held for the tokenizer page
    malloc_trim_s: float = 30.0  # give freed memory back to the OS this often (0: never)
    runs_dir: str = "~/.cache/llmlab/runs"  # where training runs started from pages go
    max_runs: int = 1  # training runs at once; one more start is a 409 naming the running one
    # CPU threads of a training run's worker (half the cores): the rest serve the pages.
    run_threads: int = field(default_factory=lambda: max(1, (os.cpu_count() or 2) // 2))
    max_corpus_chars: int = 1_000_000  # an uploaded pretraining corpus
    preload: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
                raise ValueError(f"{f.name}: must be >= 0, got {v}")
        if self.max_body_bytes <= self.max_upload_bytes:
            raise ValueError(
                f"max_body_bytes: must exceed max_upload_bytes ({self.max_upload_bytes}), "
                f"got {self.max_body_bytes}"
            )
        for name in ("max_batch", "max_batch_tokens", "attention_cache", "kb_cache",
                     "max_sessions", "max_local_models", "tokenizer_cache", "max_runs",
                     "run_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")


def is_model_dir(path: Path) -> bool:
    """Whether `path` (or its final/, as `llmlab pretrain` writes) holds a model's config:
    checked before loading, so a folder that is no model (/, /etc, ~) is a clear 400."""
    model = path / "final" if (path / "final").is_dir() else path
    try:
        return any((model / f).is_file() for f in ("llmlab.json", "config.json"))
    except OSError:  # unreadable: no model we could load either
        return False


def local_model_dirs(dirs: list[str]) -> dict[str, Path]:
    """Name each --model-dir by its folder (a run dir's own name, not "final"), unique;
    a folder that holds no model is an error naming it, before the server starts."""
    out: dict[str, Path] = {}
    for d in dirs:
        path = Path(d).expanduser()
        if not is_model_dir(path):
            raise ValueError(
                f"model_dirs: {d!r} is not a model directory (expected llmlab.json or "
                "config.json in it, or in its final/ as `llmlab pretrain` writes)"
            )
        name, k = path.resolve().name, 2
        while name in out:
            name, k = f"{path.resolve().name}-{k}", k + 1
        out[name] = path
    return out


def self_url(host: str, port: int) -> str:
    """The URL this machine reaches a server listening on host:port at: a wildcard address
    is reached at loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class FairLock:
    """A re-entrant lock granted in arrival order (a ticket lock). The decoding worker
    takes it once per step; a plain lock lets it take the lock straight back and starve
    a waiting call, this one hands it to that call first."""

    def __init__(self) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._next = 0  # the next ticket to hand out
        self._turn = 0  # the ticket now allowed in
        self._owner: int | None = None
        self._depth = 0

    def __enter__(self) -> FairLock:
        me = threading.get_ident()
        with self._cv:
            if self._owner == me:
                self._depth += 1
                return self
            ticket = self._next
            self._next += 1
            while self._turn != ticket:
                self._cv.wait()
            self._owner, self._depth = me, 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cv:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._turn += 1
                self._cv.notify_all()

    @property
    def waiting(self) -> int:
        with self._cv:
            return self._next - self._turn - (self._owner is not None)


class Hub:
    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.lock = FairLock()  # every model forward pass runs under it
        self._batcher: Any = None
        self.warmups: list[Any] = []  # run after preload (the RAG page's default index)
        self.ready = False  # preload and warm-ups done
        self.cleanups: list[Any] = []  # run at shutdown (the RAG page's upload folder)
        self._stop = threading.Event()
        # Re-entrant: gen_lm's loader loads lm first, under the same lock.
        self._load_lock = threading.RLock()
        self._models: dict[str, Any] = {}
        self._local: LRU[str, Any] = LRU(cfg.max_local_models)  # resolved path -> model
        self.model_dirs = local_model_dirs(cfg.model_dirs)  # name -> dir, checked now
        self._runs: Any = None
        # This server's own base URL (http://host:port), for judge runs: given by whoever
        # serves the app (`llmlab serve`), else learned from the first run request.
        self.self_url: str | None = None
        self._run_batchers: dict[str, tuple[Any, Any]] = {}  # run model -> (model, Batcher)

    def _get(self, key: str, make: Any) -> Any:
        if key not in self._models:
            with self._load_lock:
                if key not in self._models:
                    log.info("loading %s ...", key)
                    self._models[key] = make()
                    log.info("loaded %s", key)
        return self._models[key]

    @property
    def loaded(self) -> list[str]:
        return sorted(self._models)

    def lm(self) -> Any:
        """The fp32 chat model: attention maps, next-token distributions, embedding table."""
        import llmlab

        return self._get("lm", lambda: llmlab.load(self.cfg.chat_model))

    def gen_lm(self) -> Any:
        """The model used for generation: an int8 copy when fast_decode, so the fp32 one
        keeps exact numbers for the explain pages."""
        if not self.cfg.fast_decode:
            return self.lm()

        def make() -> Any:
            from llmlab.lm import to_dtype

            return to_dtype(copy.deepcopy(self.lm()), "int8")

        return self._get("gen_lm", make)

    def enc(self) -> Any:
        import llmlab

        return self._get("enc", lambda: llmlab.load(self.cfg.embed_model))

    def attention_models(self) -> list[dict[str, str]]:
        """What the attention page offers: the two bundled models, then --model-dir ones."""
        out = [
            {"id": "smollm2", "label": "SmolLM2-135M (causal)"},
            {"id": "minilm", "label": "MiniLM-L6 (bidirectional)"},
        ]
        for name, path in self.model_dirs.items():
            out.append({"id": f"local:{name}", "label": f"{name} (local)", "path": str(path)})
        for run in self.runs().list():
            if run["model"]:
                what = "adapter on " + str(run["base"]) if run["adapter"] else run["kind"]
                out.append({"id": run["model"], "label": f"{run['label'] or run['id']} ({what})",
                            "kind": run["kind"], "status": run["status"],
                            "checkpoints": run["checkpoints"], "adapter": run["adapter"],
                            # pretraining gives no chat template; a reward model scores
                            "chat": run["kind"] in ("sft", "dpo", "ppo", "grpo")})
        return out

    def runs(self) -> Any:
        """The training runs of the pages; made on first use (it reads its folder)."""
        with self._load_lock:
            if self._runs is None:
                from llmlab.lab.runs import RunManager

                self._runs = RunManager(self.cfg.runs_dir, self.cfg.max_runs,
                                        self.cfg.run_threads, self.cfg.allow_local_models,
                                        self_url=self.self_url)
            return self._runs

    def _run_model(self, name: str) -> Any:
        """`run:ID` (the run's final model, else its best checkpoint) or `run:ID@STEP`."""
        from llmlab.lab.rundir import load_run, model_dir

        run_id, _, at = name[4:].partition("@")
        if at and not at.isdigit():
            raise ValueError(f"model: {name!r}: expected run:ID@STEP with a step number")
        step = int(at) if at else None
        try:
            path = self.runs().run_dir(run_id)
        except KeyError:
            raise ValueError(f"model: no playground run {run_id!r}") from None
        key = str(model_dir(path, step).resolve())  # a new best checkpoint is a new model
        with self._load_lock:
            if key not in self._local:
                self._local.put(key, load_run(path, step))
            return self._local.get(key)

    def attention_model(self, name: str) -> Any:
        """ "smollm2", "minilm", "local:NAME" (a --model-dir), or any checkpoint directory
        when `allow_local_models`."""
        if name == "smollm2":
            return self.lm()
        if name == "minilm":
            return self.enc()
        if name.startswith("run:"):
            return self._run_model(name)
        if name.startswith("local:"):
            if name[6:] not in self.model_dirs:
                known = ", ".join(f"local:{n}" for n in self.model_dirs) or "none configured"
                raise ValueError(f"model: unknown local model {name!r}; known: {known}")
            return self._local_model(self.model_dirs[name[6:]], name[6:])
        if not self.cfg.allow_local_models:
            raise PermissionError("model: local checkpoints are disabled on this server")
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ValueError(f"model: {name!r} is not 'smollm2', 'minilm' or a checkpoint dir")
        if not is_model_dir(path):
            raise ValueError(
                f"model: {name!r} is not a model directory (expected llmlab.json or "
                "config.json in it, or in its final/)"
            )
        return self._local_model(path, path.resolve().name or name)

    def _local_model(self, path: Path, label: str) -> Any:
        key = str(path.resolve())
        with self._load_lock:
            if key not in self._local:
                import llmlab

                try:
                    lm = llmlab.load(key)
                except Exception as e:  # a config that parses, but no model we can build
                    raise ValueError(
                        f"model: {label!r} could not be loaded ({type(e).__name__}: {e})"
                    ) from e
                if lm.tokenizer is None:
                    raise ValueError(f"model: {label!r} has no tokenizer files")
                lm.name = label  # a run dir loads from final/: show the run's name
                self._local.put(key, lm)
            return self._local.get(key)

    def run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        with self.lock:
            return fn(*args, **kw)

    def batcher(self, model: str | None = None) -> Any:
        """The one generation worker, decoding every chat / RAG / /v1 request in one batch;
        a playground run's model (`run:ID`) gets a worker of its own, sharing the lock."""
        if model is not None:
            return self._run_batcher(model)
        if self._batcher is None:
            lm = self.gen_lm()
            with self._load_lock:
                if self._batcher is None:
                    # Here, not at the top: `llmlab --help` imports this module for
                    # ServerConfig, and the batcher brings torch (seconds).
                    from llmlab.generate.batcher import Batcher

                    self._batcher = Batcher(
                        lm.model,
                        lm.tokenizer,
                        max_batch=self.cfg.max_batch,
                        max_batch_tokens=self.cfg.max_batch_tokens,
                        lock=self.lock,
                    )
        return self._batcher

    def _run_batcher(self, name: str) -> Any:
        lm = self.attention_model(name)
        with self._load_lock:
            if name not in self._run_batchers or self._run_batchers[name][0] is not lm:
                from llmlab.generate.batcher import Batcher

                if name in self._run_batchers:  # the run has a newer model now
                    self._run_batchers.pop(name)[1].close()
                while len(self._run_batchers) >= self.cfg.max_local_models:
                    self._run_batchers.pop(next(iter(self._run_batchers)))[1].close()
                self._run_batchers[name] = (lm, Batcher(
                    lm.model, lm.tokenizer, max_batch=self.cfg.max_batch,
                    max_batch_tokens=self.cfg.max_batch_tokens, lock=self.lock))
            return self._run_batchers[name][1]

    def warm(self, model: str | None = None) -> None:
        """Load a generation model and its worker in the background: a judge run asks for it
        once its answers are written, and its first request should not wait for the load."""

        def load() -> None:
            with contextlib.suppress(Exception):  # a bad name fails the run's request clearly
                self.batcher(model if model and model.startswith("run:") else None)

        threading.Thread(target=load, daemon=True, name="warm").start()

    def generation_stats(self) -> dict[str, int] | None:
        """The batching worker's counters (rows, waiting, steps, cancelled...), once started."""
        return self._batcher.snapshot() if self._batcher is not None else None

    def start(self) -> None:
        """Background work of a running server: memory trimming, then preloading."""
        bound_malloc(self.cfg.malloc_trim_s, self._stop)
        if self.cfg.preload:
            # In the background so /healthz answers at once; first calls wait on the load lock.
            threading.Thread(target=self.preload, daemon=True, name="preload").start()

    def close(self) -> None:
        self._stop.set()
        if self._runs is not None:
            self._runs.close()  # each worker checkpoints and exits
        for b in [self._batcher, *(b for _, b in self._run_batchers.values())]:
            if b is not None:
                b.close()
        for fn in self.cleanups:
            fn()

    def preload(self) -> None:
        self.lm()
        self.enc()
        if self.cfg.fast_decode:
            self.gen_lm()
        for warm in self.warmups:
            warm()
        self.ready = True
