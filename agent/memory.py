"""Giving memory back to the system after a burst (an HTTP flood, a Raft log compaction).

CPython returns small objects to its own pools and glibc keeps freed heap pages for reuse, so a process that once
held a burst's buffers keeps that RSS for good unless someone asks glibc to trim.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


def _malloc_trim() -> bool:
    """Return the C heap's free pages to the system (glibc); False where there is no malloc_trim."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is None:
        return False
    trim(0)
    return True


def release_memory() -> str:
    """Collect garbage and trim the C heap; returns what was done, for the log."""
    found = gc.collect()
    return f"{found} objects collected" + (", C heap trimmed" if _malloc_trim() else "")
