import asyncio
import os
import signal
import subprocess
import sys
import time

from shared.lifecycle import MALLOC_ARENAS, run_until_signalled, stop_process

SIGTERM_IGNORED = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
    "time.sleep(60)"
)


def test_sigterm_sets_stop_and_the_service_returns_normally() -> None:
    async def service(stop: asyncio.Event) -> str:
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), timeout=5)
        return "finished in-flight work"

    assert run_until_signalled(service) == "finished in-flight work"


def test_stop_process_asks_first_then_kills() -> None:
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert stop_process(polite, timeout_s=10) == -signal.SIGTERM
    stubborn = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_IGNORED],
        stdout=subprocess.PIPE,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    started = time.monotonic()
    assert stop_process(stubborn, timeout_s=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 10
    assert stop_process(stubborn) == -signal.SIGKILL  # already gone: just its exit code


# Eight threads alive at once, each allocating through malloc (blocks above pymalloc's 512 bytes,
# below the mmap threshold), then glibc's per-arena statistics on stderr.
ARENAS_USED = """
import ctypes, sys, threading
from shared.lifecycle import limit_malloc_arenas
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
