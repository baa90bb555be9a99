"""Running the camera gateway in tests: in this process, or as a real ``lineguard camera-gateway``
process (optionally one that SIGKILLs itself at a chosen moment: ``tests/support/gateway_crash.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from services.camera_gateway.config import GatewayConfig, parse_config
from services.camera_gateway.service import GatewayStats, run_camera_gateway
from shared.messages.schemas import Frame, Verdict
from shared.settings import Settings
from shared.synthetic import render_sample
from tests.support.images import encode_image
from tests.support.line import running_scorer
from tests.support.processes import ServiceProcess, service_env
from tests.support.topics import TopicReader

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
    return encode_image(render_sample(product, np.random.default_rng(seed), size)[0], fmt)


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


@contextlib.asynccontextmanager
async def gateway_line(
    settings: Settings, model_dir: Path, config: GatewayConfig
) -> AsyncIterator[tuple[TopicReader, TopicReader]]:
    """The line behind a gateway in this process: readers of the verdicts and the frames, a scorer
    serving ``model_dir``, and the gateway with ``config``; yields the two readers."""
    async with (
        TopicReader(settings, "verdicts", Verdict) as verdicts,
        TopicReader(settings, "frames", Frame) as frames,
        running_scorer(settings, model_dir),
        running_gateway(settings, config),
    ):
        yield verdicts, frames


def write_config(path: Path, config: GatewayConfig) -> Path:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    return path


class GatewayProcess(ServiceProcess):
    """``lineguard camera-gateway --config FILE`` as a subprocess, its JSON log in a file.

    ``kill_at=(stage, n)`` runs it through ``gateway_crash.py`` instead, which SIGKILLs the process
    when a batch reaches ``stage`` ("sent", "committed" or "disposed") for the n-th time.
    """

    def __init__(
        self, settings: Settings, config_file: Path, log_path: Path, kill_at: tuple[str, int] | None = None
    ) -> None:
        env = service_env(settings, "camera_gateway")
        if kill_at is None:
            super().__init__(["camera-gateway", "--config", str(config_file)], env, log_path)
        else:
            stage, n = kill_at
            crashing = [sys.executable, "-m", "tests.support.gateway_crash"]
            super().__init__([str(config_file), stage, str(n)], env, log_path, program=crashing)

    def killed_batch(self) -> list[str]:
        """The files of the batch it killed itself in (``kill_at``)."""
        for line in self.log_text().splitlines():
            if line.startswith("KILLING "):
                files: list[str] = json.loads(line.removeprefix("KILLING "))["files"]
                return files
        raise AssertionError(f"the gateway did not kill itself:\n{self.log_tail()}")
