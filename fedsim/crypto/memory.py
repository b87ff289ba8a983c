"""Handing freed memory back to the operating system.

A round's ciphertexts are many allocations of 0.1-1 MB; once freed, glibc keeps them in
its heap (its mmap threshold grows after the first large free), so a party that peaked
at several GB while decrypting keeps that resident while the next round trains, and on
a shared machine the next peak can push Ray's memory monitor over its limit.
`release_memory` collects garbage and asks glibc to return free heap pages
(``malloc_trim(0)``); on other C libraries it only collects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import cache


@cache
def _trim() -> object | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_memory() -> None:
    """Collect garbage and return free heap pages to the OS (glibc only)."""
    gc.collect()
    trim = _trim()
    if trim is not None:
        trim(0)
