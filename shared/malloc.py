"""What a service process asks of glibc's malloc, so that its resident memory follows what it uses.

A line service lives for weeks, and two glibc behaviours make its RSS climb in steps though its
live memory does not (measured in the PLC bridge: docs/benchmarks.md, "Soak"):

- each new thread gets an arena of its own (up to eight per core), and memory freed into one arena
  is not reused by the others; the metrics server starts a thread per scrape. ``limit_malloc_arenas``
  caps them at start, before threads exist.
- memory freed in the middle of the heap stays with the process: a burst (a backlog of verdicts
  fetched at once) leaves the heap at its high-water mark. ``trim_malloc`` returns free pages
  (``malloc_trim(0)``), and ``trim_malloc_periodically`` does so once a minute.

Elsewhere than glibc (musl, macOS) these do nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from typing import Any

MALLOC_ARENAS = 2  # arenas a service process may use; two keep threads' allocation uncontended
MALLOC_TRIM_INTERVAL_S = 60.0  # a trim: ~10 ms on a fragmented 500 MB heap; a minute bounds a burst
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def _libc_function(name: str) -> Any | None:
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # not glibc
        return None


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process, before its threads start; False where the C
    library is not glibc or ``MALLOC_ARENA_MAX`` is set (the operator's choice is kept)."""
    mallopt = _libc_function("mallopt")
    if mallopt is None or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


def trim_malloc() -> bool:
    """Give the pages malloc holds free back to the system; False where there is no glibc."""
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True


async def trim_malloc_periodically(interval_s: float = MALLOC_TRIM_INTERVAL_S) -> None:
    """``trim_malloc`` every ``interval_s`` until cancelled (on the event loop: it takes ms)."""
    while trim_malloc():
        await asyncio.sleep(interval_s)
