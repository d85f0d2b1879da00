"""Giving freed memory back to the system, for a daemon that runs for months.

CPython returns freed objects to glibc's malloc, which keeps the pages for reuse: after a load (a campaign sent, an
import, a storm of clicks) the resident memory stays at its peak, and each thread's own malloc arena adds its own
high-water mark, so a daemon at rest appears to creep up by steps. Two glibc knobs fix what looks like a leak and is
not: at most ARENAS arenas for the whole process, and `malloc_trim(0)` (which hands every free page back) after a
pass, at most once every TRIM_SECONDS. Elsewhere than glibc both are skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time

log = logging.getLogger(__name__)

ARENAS = 2
M_ARENA_MAX = -8
"""mallopt's parameter number for the arena limit (glibc's malloc.h)."""
TRIM_SECONDS = 60.0

_libc: ctypes.CDLL | None = None
_last_trim = 0.0
_lock = threading.Lock()


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
        except OSError:
            libc = None
        if libc is None or not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
            return None
        _libc = libc
    return _libc


def limit_arenas() -> bool:
    """At the daemon's start, before its threads allocate: whether glibc took the limit."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_ARENA_MAX, ARENAS))


def trim(*, force: bool = False) -> bool:
    """Hand free pages back to the system (at most once every TRIM_SECONDS unless `force`): whether it ran."""
    global _last_trim
    libc = _glibc()
    if libc is None:
        return False
    with _lock:
        if not force and time.monotonic() - _last_trim < TRIM_SECONDS:
            return False
        _last_trim = time.monotonic()
    libc.malloc_trim(0)
    return True
