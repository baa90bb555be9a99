"""Running Lineguard services in tests and benchmarks: in this process (``running_service``) or as
real ``lineguard`` subprocesses (``ServiceProcess``), stopped the way production stops them.

A subprocess gets the test's configuration through the environment (``service_env``), exactly as a
deployed service would, and is stopped by ``shared.lifecycle.stop_process``: SIGTERM (finish the
work in flight, commit, exit 0), then SIGKILL if it has not exited in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, SecretStr

from shared.lifecycle import stop_process
from shared.settings import ENV_PREFIX, Settings
from tests.support.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def _env_value(value: Any) -> str:
    """A settings value as pydantic-settings reads it back from an environment variable."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple | dict | set | frozenset):
        return json.dumps(list(value) if isinstance(value, set | frozenset) else value, default=str)
    return str(value)


def service_env(settings: Settings, *sections: str, log_level: str = "INFO") -> dict[str, str]:
    """The environment of a subprocess service with this configuration: this process's environment
    without its ``LINEGUARD_*`` variables, then the broker, the topic prefix, the log level, and
    every field the test set in each named section (``"scorer"`` -> ``LINEGUARD_SCORER__*``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(
        {
            f"{ENV_PREFIX}KAFKA_BOOTSTRAP": settings.bootstrap,
            f"{ENV_PREFIX}TOPIC_PREFIX": settings.topic_prefix,
            f"{ENV_PREFIX}LOG_LEVEL": log_level,
            "PYTHONUNBUFFERED": "1",
        }
    )
    for section in sections:
        values: BaseModel = getattr(settings, section)
        for name, value in values.model_dump(exclude_unset=True).items():
            if value is not None:
                env[f"{ENV_PREFIX}{section.upper()}__{name.upper()}"] = _env_value(value)
    return env


class ServiceProcess:
    """``lineguard ARGS...`` as a real subprocess, its output (JSON logs) in ``log_path``."""

    def __init__(self, args: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.command = args[0]
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]

    async def wait_for_log(self, needle: str, timeout: float) -> None:
        """Until ``needle`` shows in the log; an error with the log's tail if the process exits first."""
        await wait_until(
            lambda: needle in self.log_text() or self.process.poll() is not None, timeout, needle
        )
        if needle not in self.log_text():
            code = self.process.returncode
            raise AssertionError(f"{self.command} exited ({code}) before {needle!r}:\n{self.log_tail()}")

    async def wait(self, timeout: float) -> int:
        """Until the process exits by itself (a command that finishes, like ``camera-sim --count``)."""
        code = await asyncio.to_thread(self.process.wait, timeout)
        self._log.close()
        return code

    async def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code (0: a clean, committed stop)."""
        code = await asyncio.to_thread(stop_process, self.process, timeout_s)
        self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything (open transactions, uncommitted offsets stay)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._log.close()
