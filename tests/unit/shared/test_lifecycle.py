import asyncio
import os
import signal
import subprocess
import sys
import time

from shared.lifecycle import run_until_signalled, stop_process

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

