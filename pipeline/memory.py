"""Allocator settings for the length of one run.

A big run allocates and frees arrays of hundreds of MB again and again (one per column, filter and
slice). By default glibc hands freed memory back to the OS at once and takes it again page by page
(a page fault each 4 KiB), and Arrow's mimalloc does the same with its pages: at 12.8M rows that
was 0.9M page faults and 5 of the run's 16 CPU-seconds spent in the kernel. For the run, glibc keeps
what is freed (``M_TRIM_THRESHOLD``) and grows its heap 1 GiB at a time (``M_TOP_PAD``: address
space, touched only when used), and Arrow allocates from jemalloc, whose freed pages return to the
OS on a timer: measured at 12.8M rows (CLIP score B/32, metadata pool) 10.7 -> 8.5 s wall, 5.0 ->
2.5 kernel CPU-seconds, peak RSS 2.70 -> 2.44 GB. Afterwards glibc's defaults come back and what it
kept is trimmed, so a long-lived process (a Prefect worker) does not hold a run's peak.
Elsewhere (no glibc, an Arrow build without jemalloc) nothing changes."""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_TOP_PAD = -1, -2  # glibc's mallopt parameters (malloc.h)
DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_TOP_PAD: 128 * 1024}  # mallopt(3)
RUN = {M_TRIM_THRESHOLD: 2 ** 31 - 1, M_TOP_PAD: 1 << 30}  # mallopt takes a C int
_lock = threading.Lock()
_depth = 0  # runs under way in this process (a test or a flow may nest or overlap them)
_before = None  # Arrow's pool before the first of them


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _set(libc, values: dict) -> None:
    for k, v in values.items():
        libc.mallopt(ctypes.c_int(k), ctypes.c_int(v))


@contextmanager
def kept():
    """Inside: the run's allocator settings (this module's docstring); restored on leaving the last."""
    global _depth, _before
    import pyarrow as pa

    libc = _glibc()
    with _lock:
        _depth += 1
        if _depth == 1:
            if libc is not None:
                _set(libc, RUN)
            _before = pa.default_memory_pool()
            try:
                pa.set_memory_pool(pa.jemalloc_memory_pool())
            except NotImplementedError:  # an Arrow built without jemalloc (ArrowNotImplementedError is one)
                _before = None
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                if _before is not None:
                    pa.set_memory_pool(_before)
                    _before = None
                if libc is not None:
                    _set(libc, DEFAULTS)
                    libc.malloc_trim(ctypes.c_size_t(0))
