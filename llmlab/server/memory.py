"""Keep the server's resident memory near its live data.

glibc gives freed memory back to the OS lazily. After a big block is freed it raises its
mmap threshold, so later tensors (KV caches, attention maps, logits) come from heap arenas
that only grow, and each thread of the request pool gets an arena of its own. In a 32-client
soak (benchmarks/serve_soak.py) RSS went 1.76 -> 2.15 GB while `malloc_trim` alone gave
0.75 GB back: retained, not live. So the server fixes the mmap threshold at 1 MiB (big
tensors are mapped and unmapped on free), allows 2 arenas, and trims every `every_s` seconds.
Without glibc (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading

log = logging.getLogger("llmlab.server")
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # mallopt parameters from glibc's malloc.h


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  (glibc-only symbols)
    except (OSError, AttributeError):
        return None
    return libc


def bound_malloc(every_s: float, stop: threading.Event) -> bool:
    """Apply the settings above and start the trimming thread; False without glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
    libc.mallopt(M_ARENA_MAX, 2)

    def trim() -> None:
        while not stop.wait(every_s):
            libc.malloc_trim(0)

    if every_s > 0:
        threading.Thread(target=trim, daemon=True, name="malloc-trim").start()
    return True
