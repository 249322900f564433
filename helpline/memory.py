"""The serving process's memory: glibc malloc settings and giving freed memory back.

A long-running server that trained or ingested at start-up (over 1 GB at the peak) should not keep
that memory for its lifetime; see docs/benchmarks.md for what these measure. Both functions are
no-ops on C libraries other than glibc.
"""

from __future__ import annotations

from typing import Any


def _libc() -> Any:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def tune_malloc(arenas: int = 2, mmap_threshold: int = 256 * 1024) -> None:
    """glibc malloc settings for a long-running server, set before the worker threads start.

    - ``M_ARENA_MAX`` 2: glibc gives each allocating thread an arena of its own (up to 8 per core),
      and memory freed in an arena is rarely returned; with the turn threads, the database driver's
      and the model's, a busy process held hundreds of MB it no longer used.
    - ``M_MMAP_THRESHOLD`` fixed at 256 KiB: blocks above it (model activations, a knowledge-base
      ingest's batches) are mapped and unmapped on free. By default glibc raises the threshold
      after each such free, so later large blocks come from the heap and stay in the RSS.

    Same as ``MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=262144``; a no-op on other C libraries.
    Measured in docs/benchmarks.md.
    """
    import ctypes

    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return
    libc.mallopt(ctypes.c_int(-8), ctypes.c_int(arenas))  # M_ARENA_MAX (malloc.h)
    libc.mallopt(ctypes.c_int(-3), ctypes.c_int(mmap_threshold))  # M_MMAP_THRESHOLD


def release_free_memory() -> None:
    """Give memory freed during start-up (training, ingest) back to the system (``malloc_trim``)."""
    import ctypes

    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(ctypes.c_size_t(0))
