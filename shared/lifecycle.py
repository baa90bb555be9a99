"""How every service process starts and stops.

A service command is ``run_service(NAME, serve, metrics.REGISTRY)``: settings loaded and checked,
JSON logs, traces, ``/metrics``, then ``serve(settings, stop)`` on one event loop, stopped
gracefully by SIGTERM or SIGINT. A command with work of its own between start-up and serving calls
the two halves, ``start_service`` and ``run_until_signalled``. Child processes (the demo's scorer
and camera simulator) are stopped the same way, by ``stop_process``.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from shared.malloc import limit_malloc_arenas, trim_malloc_periodically
from shared.settings import Settings, load_settings
from shared.telemetry.logging import setup_logging
from shared.telemetry.metrics import start_metrics_server
from shared.telemetry.tracing import setup_tracing

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

T = TypeVar("T")



def start_service(
    name: str,
    registry: CollectorRegistry | None = None,
    *,
    tracing: bool = False,
    check: Callable[[Settings], object] | None = None,
) -> Settings:
    """Load the settings and set up what every service has; returns the settings.

    First the malloc arenas are capped (``limit_malloc_arenas``), before any thread starts.

    ``check(settings)`` runs before anything is started, so a ``ConfigError`` stops the command with
    one clear line and no half-started process. Then JSON logs as ``name``, traces when the service
    makes spans (``tracing``), and ``/metrics`` on ``LINEGUARD_METRICS_PORT`` when it has a
    ``registry`` (a command without one, like a simulator, serves no metrics).
    """
    limit_malloc_arenas()
    settings = load_settings()
    if check is not None:
        check(settings)
    setup_logging(name, settings.log_level)
    if tracing:
        setup_tracing(name, settings.otel_exporter)
    if registry is not None:
        start_metrics_server(settings.metrics_port, registry)
    return settings


def run_service(
    name: str,
    serve: Callable[[Settings, asyncio.Event], Awaitable[int | None]],
    registry: CollectorRegistry | None = None,
    *,
    tracing: bool = False,
    check: Callable[[Settings], object] | None = None,
) -> int:
    """``start_service`` then ``serve(settings, stop)`` until it returns; its exit code (None: 0)."""
    settings = start_service(name, registry, tracing=tracing, check=check)
    return run_until_signalled(lambda stop: serve(settings, stop)) or 0


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run ``main(stop)`` to completion; SIGTERM and SIGINT set ``stop`` instead of killing the
    process, so the service finishes the work in flight, commits and returns. Meanwhile the memory
    malloc holds free goes back to the system once a minute (``shared.malloc``)."""

    async def runner() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        trimming = asyncio.create_task(trim_malloc_periodically())
        try:
            return await main(stop)
        finally:
            trimming.cancel()

    return asyncio.run(runner())


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 20.0) -> int:
    """SIGTERM (the clean shutdown above), then SIGKILL if it has not exited within ``timeout_s``;
    returns its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode
