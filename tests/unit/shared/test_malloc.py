import asyncio
import os
import subprocess
import sys

import pytest

from shared.malloc import MALLOC_ARENAS, trim_malloc, trim_malloc_periodically

# Eight threads alive at once, each allocating through malloc (blocks above pymalloc's 512 bytes,
# below the mmap threshold), then glibc's per-arena statistics on stderr.
ARENAS_USED = """
import ctypes, sys, threading
from shared.malloc import limit_malloc_arenas
if sys.argv[1] == "limited":
    limit_malloc_arenas()
together = threading.Barrier(8)
kept = []
def allocate():
    kept.append([bytearray(4096) for _ in range(64)])
    together.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL(None).malloc_stats()
"""


def _arenas(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run(
        [sys.executable, "-c", ARENAS_USED, mode], env=env, capture_output=True, text=True, check=True
    )
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


def test_a_service_keeps_to_a_few_malloc_arenas_however_many_threads_allocate() -> None:
    # glibc gives each new thread an arena of its own (up to 8 per core); memory freed in one is
    # not returned to another, so a long-running process with short-lived threads (the metrics
    # server's one per scrape, the ledger's writer) grows in steps. Services cap them at start.
    assert _arenas("default") > MALLOC_ARENAS
    assert 1 <= _arenas("limited") <= MALLOC_ARENAS


# 64 MB in 1 KB blocks on the main heap, freed but for the block allocated last, which pins the top
# of the heap so that free() alone cannot shrink it; then how much RSS a trim gives back.
RELEASED_BY_TRIM = """
import os, sys
from shared.malloc import trim_malloc
def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
blocks = [bytearray(1024) for _ in range(65536)]
pin = bytearray(1024)
del blocks
before = rss()
if sys.argv[1] == "trim":
    trim_malloc()
print(before - rss())
"""


def _released_mb(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", RELEASED_BY_TRIM, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout) / 2**20


def test_a_trim_gives_back_the_memory_a_burst_left_free_in_the_heap() -> None:
    assert _released_mb("none") < 8
    assert _released_mb("trim") > 48


def test_the_periodic_trim_runs_until_cancelled() -> None:
    async def run() -> None:
        task = asyncio.create_task(trim_malloc_periodically(interval_s=0.01))
        await asyncio.sleep(0.05)
        assert not task.done()  # trimming works here (glibc), so it keeps going
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert trim_malloc()
    asyncio.run(run())
