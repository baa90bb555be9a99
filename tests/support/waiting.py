"""Waiting for something to become true, in async tests."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

POLL_S = 0.05


async def wait_until(check: Callable[[], Any], timeout: float = 15.0, what: str = "the condition") -> Any:
    """Call ``check()`` (awaiting it when it returns an awaitable) until it gives a true value, and
    return that value. An ``AssertionError`` inside ``check`` counts as "not yet"; after ``timeout``
    seconds the last one is raised, or an ``AssertionError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(POLL_S)
