"""Running the camera gateway in tests: in this process, or as a real ``lineguard camera-gateway``
process (optionally one that SIGKILLs itself at a chosen moment: ``tests/support/gateway_crash.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from services.camera_gateway.config import GatewayConfig, parse_config
from services.camera_gateway.service import GatewayStats, run_camera_gateway
from shared.settings import Settings
from shared.synthetic import render_sample

REPO_ROOT = Path(__file__).resolve().parents[2]


def gateway_settings(settings: Settings, **gateway: Any) -> Settings:
    """Test settings for a gateway: a transactional id of the test's own, quick retries."""
    values = {
        "transactional_id": f"{settings.topic_prefix}-gateway",
        "retry_initial_s": 0.2,
        "retry_max_s": 2.0,
        "drain_timeout_s": 5.0,
        **gateway,
    }
    return settings.model_copy(update={"camera_gateway": settings.camera_gateway.model_copy(update=values)})


def cameras(*entries: dict[str, Any]) -> GatewayConfig:
    return parse_config({"cameras": list(entries)}, "test")


def product_image(product: str, seed: int, size: int, fmt: str = "PNG") -> bytes:
    """A synthetic product picture, encoded as a camera would save it."""
    pixels, _ = render_sample(product, np.random.default_rng(seed), size)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


@contextlib.asynccontextmanager
async def running_gateway(
    settings: Settings, config: GatewayConfig, **options: Any
) -> AsyncIterator[asyncio.Task[GatewayStats]]:
    """The gateway in this process; stopped (SIGTERM's way) on exit, its errors re-raised."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_camera_gateway(settings, config, stop, **options))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def gateway_env(settings: Settings) -> dict[str, str]:
    """The environment of a gateway process with ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    env.update(
        LINEGUARD_KAFKA_BOOTSTRAP=settings.bootstrap,
        LINEGUARD_TOPIC_PREFIX=settings.topic_prefix,
        LINEGUARD_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(REPO_ROOT),
    )
    for name, value in settings.camera_gateway.model_dump(mode="json").items():
        if value is not None:
            env[f"LINEGUARD_CAMERA_GATEWAY__{name.upper()}"] = str(value)
    return env


def write_config(path: Path, config: GatewayConfig) -> Path:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    return path


class GatewayProcess:
    """``lineguard camera-gateway --config FILE`` as a subprocess, its JSON log in a file.

    ``kill_at=(stage, n)`` runs it through ``gateway_crash.py`` instead, which SIGKILLs the process
    when a batch reaches ``stage`` ("sent", "committed" or "disposed") for the n-th time.
    """

    def __init__(
        self, settings: Settings, config_file: Path, log_path: Path, kill_at: tuple[str, int] | None = None
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()/kill()
        command: Sequence[str]
        if kill_at is None:
            command = [sys.executable, "-m", "services.cli", "camera-gateway", "--config", str(config_file)]
        else:
            stage, n = kill_at
            command = [sys.executable, "-m", "tests.support.gateway_crash", str(config_file), stage, str(n)]
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=gateway_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def killed_batch(self) -> list[str]:
        """The files of the batch it killed itself in (``kill_at``)."""
        for line in self.log_text().splitlines():
            if line.startswith("KILLING "):
                files: list[str] = json.loads(line.removeprefix("KILLING "))["files"]
                return files
        raise AssertionError(f"the gateway did not kill itself:\n{self.log_text()[-3000:]}")

    async def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"gateway still running after {timeout}s:\n{self.log_text()[-3000:]}")
            await asyncio.sleep(0.1)
        self._log.close()
        return self.process.returncode

    async def terminate(self, timeout: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._log.close()
