"""Knowledge bases for many visitors at once: upload sessions, and the indexes built on them.

A server (the playground's RAG page) lets each visitor upload documents into a session and
query an index of a fixed base set plus that session's uploads. Everything here stays
bounded however many visitors come and go:

- `UploadSessions`: one folder per session, at most `cap` (the least recently used goes
  first), deleted after `ttl` s idle, at most `per_client` per client address.
- `KnowledgeBases`: one index per (chunk size, session, content hash of its uploads), built
  once however many requests want it, stopped when all of them leave or it runs over
  `max_build_s`, refused before any embedding when it would exceed `max_chunks`; at most
  `cache` indexes kept, the base set's at the default chunk size never dropped.
- `sweep_stale`: the temp folders of servers killed without a clean shutdown.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from llmlab.lru import LRU
from llmlab.rag.chunk import chunk_text
from llmlab.rag.ingest import Document, load_documents
from llmlab.rag.pipeline import IndexLimitError, RagIndex

# Temp folders carry our pid, so a start-up sweep can tell a dead server's folders from
# a live one's.
KB_PREFIX, UPLOADS_PREFIX = "llmlab-kb-", "llmlab-uploads-"
_OURS = re.compile(rf"(?:{KB_PREFIX}|{UPLOADS_PREFIX})(\d+)-")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
EMBED_BATCH = 16  # texts per embedding call: one short turn of a server's model lock


def safe_name(name: str) -> str:
    """Keep only the final component, in a safe alphabet: no "..", no slashes, no NULs."""
    base = name.replace("\\", "/").split("/")[-1]
    base = _SAFE.sub("_", base).lstrip(".")[:80]
    return base or "upload.txt"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_stale(root: Path | None = None) -> list[Path]:
    """Delete the index and upload folders that servers killed without a clean shutdown
    (SIGKILL, a crash) left in `root` (the temp dir): only folders of ours, owned by this
    user, whose pid in the name is no longer running. Returns what was removed."""
    root = Path(root or tempfile.gettempdir())
    gone = []
    for p in root.iterdir():
        m = _OURS.match(p.name)
        try:
            ours = m is not None and p.is_dir() and not p.is_symlink() \
                and p.stat().st_uid == os.getuid()
        except OSError:
            continue
        if ours and m is not None and int(m.group(1)) != os.getpid() \
                and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


class SessionLimitError(Exception):
    """The client already holds its `per_client` upload sessions."""


class UploadSessions:
    """Upload folders, one per browser session: at most `cap` (the least recently used one
    goes first), each deleted after `ttl` seconds without use, so disk and the indexes built
    from them stay bounded however many visitors come and go."""

    def __init__(
        self, root: Path, cap: int, ttl: float, per_client: int | None = None
    ) -> None:
        self.root, self.ttl, self.per_client = root, ttl, per_client
        # sid -> (last use, client address): one client may hold only `per_client` sessions,
        # so it can't push every other visitor's uploads out of the LRU.
        self._last: LRU[str, tuple[float, str]] = LRU(cap, on_evict=lambda sid, _: self._rm(sid))

    @classmethod
    def temporary(cls, cap: int, ttl: float, per_client: int | None = None) -> UploadSessions:
        """Sessions in a fresh temp folder named with our pid, after sweeping the folders
        that killed servers left."""
        sweep_stale()
        root = Path(tempfile.mkdtemp(prefix=f"{UPLOADS_PREFIX}{os.getpid()}-"))
        return cls(root, cap, ttl, per_client)

    def get(self, sid: str | None) -> Path | None:
        """The folder of session `sid`, marked used now; None when there is no such session."""
        entry = self._last.get(sid) if sid else None
        if sid is None or entry is None:
            return None
        self._last.put(sid, (time.monotonic(), entry[1]))
        return self.root / sid

    def open(self, sid: str, client: str = "") -> tuple[Path, list[str]]:
        """The folder for `sid` (32 hex chars: no traversal), created if new; and the ids
        of sessions removed to make room or for being idle. A client at its `per_client`
        cap gets a SessionLimitError."""
        gone = self.expire()
        if sid in self._last:
            self.get(sid)
            return self.root / sid, gone
        held = sum(1 for _, (_, c) in self._last.items() if c == client)
        if self.per_client is not None and held >= self.per_client:
            raise SessionLimitError(
                f"session: this client already holds {held} upload sessions, the limit "
                f"per client (max_client_sessions={self.per_client}); upload into one "
                f"of them (pass its session id) or wait {self.ttl:.0f} s for one to expire"
            )
        (self.root / sid).mkdir(exist_ok=True)
        gone += self._last.put(sid, (time.monotonic(), client))
        return self.root / sid, gone

    def expire(self) -> list[str]:
        """Remove the sessions idle longer than `ttl`; returns their ids."""
        now = time.monotonic()
        idle = [sid for sid, (t, _) in self._last.items() if now - t > self.ttl]
        for sid in idle:
            self._last.pop(sid)
            self._rm(sid)
        return idle

    def _rm(self, sid: str) -> None:
        shutil.rmtree(self.root / sid, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __len__(self) -> int:
        return len(self._last)


class BuildCancelled(Exception):
    """Every client waiting for an index build left, or the server is shutting down."""


class _Build:
    """An index build in progress, shared by the requests that want the same index."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.idx: RagIndex | None = None
        self.error: BaseException | None = None
        self.clients: list[threading.Event] = []  # set when that request's client left

    def abandoned(self) -> bool:
        return all(gone.is_set() for gone in self.clients)


class _BatchEmbedder:
    """An index's Embedder over `embed_batch` (texts -> (n, 384) float32), EMBED_BATCH texts
    a call: a server runs each call under its model lock, so chat steps and attention maps
    interleave with a build that takes many seconds. `check` runs before every call and
    raises to stop the build."""

    name = "torch"
    dim = 384

    def __init__(self, embed_batch: Callable[[list[str]], np.ndarray],
                 check: Callable[[], None] | None = None) -> None:
        self.embed_batch, self.check = embed_batch, check

    def embed(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        texts = list(texts)
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        for s in range(0, len(texts), EMBED_BATCH):
            if self.check is not None:  # raises when the build is abandoned or over time
                self.check()
            out.append(self.embed_batch(texts[s : s + EMBED_BATCH]))
        return np.concatenate(out)


class KnowledgeBases:
    """The indexes of `base` (a list of files and folders) plus each session's uploads, per
    chunk size. One lock guards sessions, indexes and builds; it is never held during a build,
    so a cached index is returned at once while another one builds."""

    def __init__(
        self,
        sessions: UploadSessions,
        base: list[Path],
        embed_batch: Callable[[list[str]], np.ndarray],
        *,
        cache: int,
        max_chunks: int,
        max_build_s: float,
        max_docs: int,
        default_chunk_size: int,
    ) -> None:
        self.sessions, self.base, self.embed_batch = sessions, base, embed_batch
        self.max_chunks, self.max_build_s, self.max_docs = max_chunks, max_build_s, max_docs
        self.default_chunk_size = default_chunk_size
        # (chunk_size, session, content hash) -> (index, its temp dir). The default index is
        # never evicted: other visitors' chunk sizes and uploads can't force a rebuild.
        self._kbs: LRU[tuple, tuple[RagIndex, tempfile.TemporaryDirectory]] = LRU(
            cache, on_evict=lambda _, v: v[1].cleanup(),
            pinned=lambda k: k == (default_chunk_size, None, ""),
        )
        self._builds: dict[tuple, _Build] = {}  # key -> the build in progress for it
        self._counts: LRU[tuple[str, int], int] = LRU(4096)  # (doc sha256, chunk size) -> chunks
        self._lock = threading.Lock()
        self._closing = threading.Event()

    # ---- sessions ----------------------------------------------------------------------
    def touch(self, sid: str) -> bool:
        """Whether upload session `sid` exists (it is marked used now)."""
        with self._lock:
            return self.sessions.get(sid) is not None

    def add_document(self, sid: str, client: str, name: str, data: bytes) -> tuple[str, int]:
        """Write `data` into session `sid` (opened if new) as `safe_name(name)`; returns that
        name and how many documents the session now holds."""
        with self._lock:
            sdir, gone = self.sessions.open(sid, client)
            self._forget(gone)
            docs = list(sdir.iterdir())
            if len(docs) >= self.max_docs:
                raise ValueError(f"file: at most {self.max_docs} per session")
            target = sdir / safe_name(name)
            assert target.resolve().parent == sdir.resolve()  # safe_name guarantees it
            target.write_bytes(data)
            return target.name, len(docs) + (target not in docs)

    def _forget(self, gone: list[str]) -> None:
        """Drop the indexes of removed sessions (called with the lock held)."""
        for key in [k for k in self._kbs if k[1] in gone]:
            self._kbs.pop(key)[1].cleanup()

    def _key(self, chunk_size: int, sdir: Path | None) -> tuple:
        """The cache key: the uploads' names and contents, so a re-uploaded file with the
        same name gets a fresh index (called with the lock held: uploads write under it)."""
        if sdir is None:
            return (chunk_size, None, "")
        h = hashlib.sha256()
        for f in sorted(sdir.iterdir()):
            h.update(f"{f.name}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\0".encode())
        return (chunk_size, sdir.name, h.hexdigest())

    def _paths(self, sid: str | None) -> list[Path]:
        return [*self.base, *([self.sessions.root / sid] if sid else [])]

    # ---- indexes -----------------------------------------------------------------------
    def check_size(self, chunk_size: int, session: str | None) -> None:
        """IndexLimitError when the index to build would have more than max_chunks chunks,
        checked before any embedding. Chunking costs far less than embedding, and each
        document's count is remembered; the build checks again (the files may change)."""
        with self._lock:
            sdir = self.sessions.get(session)
            key = self._key(chunk_size, sdir)
            if key in self._kbs or key in self._builds:
                return
        n = 0
        for d in load_documents(self._paths(key[1]), errors=[]):
            n += self._count(d, chunk_size)
            if n > self.max_chunks:
                raise IndexLimitError(
                    f"chunk_size: {chunk_size} cuts these documents into more than "
                    f"{self.max_chunks} chunks, the limit per index; use a larger chunk_size "
                    "or fewer documents"
                )

    def _count(self, d: Document, chunk_size: int) -> int:
        with self._lock:
            n = self._counts.get((d.sha256, chunk_size))
        if n is None:
            n = len(chunk_text(d.text, chunk_size, chunk_size // 8))
            with self._lock:
                self._counts.put((d.sha256, chunk_size), n)
        return n

    def get(
        self, chunk_size: int, session: str | None, gone: threading.Event | None = None
    ) -> RagIndex:
        """The index for (chunk size, session). A cached one is returned at once, never
        waiting on a build; a missing one is built once however many requests want it, and
        the build stops when all of them have left (`gone` is set when this one's client
        disconnects)."""
        gone = gone or threading.Event()
        while True:
            with self._lock:
                self._forget(self.sessions.expire())
                key = self._key(chunk_size, self.sessions.get(session))
                hit = self._kbs.get(key)
                if hit is not None:
                    return hit[0]
                b = self._builds.get(key)
                owner = b is None
                if b is None:
                    b = self._builds[key] = _Build()
                b.clients.append(gone)
            if owner:
                self._build(b, key)
            else:
                while not b.done.wait(0.2):
                    if gone.is_set() or self._closing.is_set():
                        raise BuildCancelled("the client left while the index was built")
            if b.idx is not None:
                return b.idx
            if isinstance(b.error, BuildCancelled) and not gone.is_set() \
                    and not self._closing.is_set():
                continue  # the clients of that build left just as this one came: build anew
            assert b.error is not None
            raise b.error

    def _build(self, b: _Build, key: tuple) -> None:
        """Build the index for `key` into `b`; only one thread builds a given key."""
        deadline = time.monotonic() + self.max_build_s

        def check() -> None:
            if self._closing.is_set() or b.abandoned():
                raise BuildCancelled("the index build was cancelled: its clients left")
            if time.monotonic() > deadline:
                raise ValueError(
                    f"chunk_size: building the index took over {self.max_build_s:.0f}"
                    " s; use a larger chunk_size or fewer documents"
                )

        tmp = tempfile.TemporaryDirectory(prefix=f"{KB_PREFIX}{os.getpid()}-")
        try:
            emb = _BatchEmbedder(self.embed_batch, check)
            idx = RagIndex.create(tmp.name, embedder=emb)  # type: ignore[arg-type]
            chunk_size = key[0]
            idx.index(self._paths(key[1]), chunk_size=chunk_size, overlap=chunk_size // 8,
                      progress=False, max_chunks=self.max_chunks)
            check()
            emb.check = None  # built: its queries embed whoever asks
        except BaseException as e:
            tmp.cleanup()
            b.error = e
        else:
            b.idx = idx
            with self._lock:
                if self._closing.is_set():  # close() already emptied the cache
                    tmp.cleanup()
                    return
                self._kbs.put(key, (idx, tmp))
        finally:
            with self._lock:
                self._builds.pop(key, None)
            b.done.set()

    def close(self) -> None:
        """Stop running builds, delete every index and upload folder."""
        self._closing.set()  # running builds stop at their next batch and delete their folders
        with self._lock:
            running = list(self._builds.values())
        for b in running:  # a batch takes well under a second; a stuck one can't hold exit
            b.done.wait(timeout=10)
        with self._lock:
            for key in list(self._kbs):
                self._kbs.pop(key)[1].cleanup()
        self.sessions.close()
        # A build thread that outlived the wait dies with the process: its folder goes now.
        for p in Path(tempfile.gettempdir()).glob(f"{KB_PREFIX}{os.getpid()}-*"):
            shutil.rmtree(p, ignore_errors=True)

