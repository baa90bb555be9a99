"""A ``lineguard`` service as a real subprocess (``python -m services.cli ...``), configured by
environment variables the way a plant configures it, with its JSON log in a file: for the tests
that SIGKILL or SIGTERM a service and start it again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shared.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def service_env(settings: Settings, **sections: dict[str, Any]) -> dict[str, str]:
    """The environment of a service process: this test's broker and topic prefix, plus the given
    section values (``explainer={"base_url": ...}`` -> ``LINEGUARD_EXPLAINER__BASE_URL``); lists and
    dicts as JSON, as pydantic-settings reads them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    env.update(
        {
            "LINEGUARD_KAFKA_BOOTSTRAP": settings.bootstrap,
            "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix,
            "LINEGUARD_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for section, values in sections.items():
        for name, value in values.items():
            if isinstance(value, dict | list):
                text = json.dumps(value)
            elif isinstance(value, bool):
                text = str(value).lower()
            else:
                text = "" if value is None else str(value)
            env[f"LINEGUARD_{section.upper()}__{name.upper()}"] = text
    return env


class ServiceProcess:
    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed when the process is reaped
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

    async def wait_for_log(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log_text():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"exited ({self.process.returncode}) before {needle!r}:\n{self.log_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} within {timeout}s:\n{self.log_text()[-3000:]}")
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: nothing is flushed, committed or closed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._log.close()

    async def terminate(self, timeout: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.process.poll() is None:
            self.kill()
            raise AssertionError(f"no exit within {timeout}s of SIGTERM:\n{self.log_text()[-3000:]}")
        self._log.close()
        return self.process.returncode
