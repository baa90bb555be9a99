import asyncio
import os
import signal

from shared.lifecycle import run_until_signalled


def test_sigterm_sets_stop_and_the_service_returns_normally() -> None:
    async def service(stop: asyncio.Event) -> str:
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), timeout=5)
        return "finished in-flight work"

    assert run_until_signalled(service) == "finished in-flight work"
