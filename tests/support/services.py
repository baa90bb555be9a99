"""A Lineguard service object run in this process for a test, until it is ready and then until
the test is done (as real subprocesses: ``tests.support.processes``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeVar

from shared.settings import Settings


class Service(Protocol):
    """A service object with a ``run(stop)`` coroutine and a ``ready`` event (alerts, PLC bridge)."""

    ready: asyncio.Event

    async def run(self, stop: asyncio.Event) -> Any: ...


S = TypeVar("S", bound=Service)


@contextlib.asynccontextmanager
async def running_service(service: S, ready_timeout_s: float = 30.0) -> AsyncIterator[S]:
    """``service.run(stop)`` in a task until it is ready; on exit ``stop`` is set and the run awaited.
    A service that fails before it is ready raises what stopped it."""
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        ready = asyncio.ensure_future(service.ready.wait())
        done, _ = await asyncio.wait(
            {task, ready}, timeout=ready_timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            task.result()
        assert service.ready.is_set(), f"{type(service).__name__} not ready in {ready_timeout_s} s"
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@contextlib.asynccontextmanager
async def running_explainer(settings: Settings, stop_timeout_s: float = 60.0) -> AsyncIterator[None]:
    """The explainer (``run_explainer``) in a task for the block; on exit it is stopped and awaited,
    so what it raised is raised here."""
    from services.explainer.service import run_explainer

    stop = asyncio.Event()
    task = asyncio.create_task(run_explainer(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, stop_timeout_s)
