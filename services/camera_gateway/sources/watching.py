"""What the file-watching sources (the hot folder, the trigger file) share: a watchdog observer
that runs while their loop does, and the loop's wait for the observer's wake-up or the next tick
(a tick also catches what a filesystem without events never reports)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from watchdog.observers.api import BaseObserver


@contextlib.asynccontextmanager
async def observing(observer: BaseObserver) -> AsyncIterator[None]:
    """``observer`` started; stopped and joined (off the event loop) on leaving."""
    observer.start()
    try:
        yield
    finally:
        observer.stop()
        await asyncio.to_thread(observer.join, 5.0)


async def wake_or_tick(wake: asyncio.Event, tick_s: float) -> None:
    """Until ``wake`` is set after this call, or ``tick_s`` have passed."""
    wake.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), tick_s)
