"""Handing freed memory back to the operating system.

A round's ciphertexts are many allocations of 0.1-1 MB; once freed, glibc keeps them in
its heap (its mmap threshold grows after the first large free), so a party that peaked
at several GB while decrypting keeps that resident while the next round trains, and on
a shared machine the next peak can push Ray's memory monitor over its limit.
`release_memory` asks glibc to return free heap pages (``malloc_trim(0)``) after a
party handled at least 64 MiB of payloads (below that the heap is small, and a trim on
a large process, say an in-process test run, costs more than it returns); on other C
libraries it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _trim() -> object | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


LARGE = 64 << 20  # bytes of payloads handled past which freed memory goes back


def release_memory(handled: int) -> None:
    """Return free heap pages to the OS (glibc only) once ``handled`` bytes of payloads
    went through this party since the last call, if that is at least `LARGE`."""
    trim = _trim() if handled >= LARGE else None
    if trim is not None:
        trim(0)
