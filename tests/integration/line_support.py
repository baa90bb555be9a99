"""Shared pieces of the line's integration tests (``test_line_*.py``): models, readers, scorers.

The models are real: ``efficientnet_lite0`` with its real weights at a small input size and a tiny
bank, fitted once per test session on synthetic products (two versions, for the hot-swap tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from services.camera_sim.core import SimOptions
from services.camera_sim.truth import FRAME_ID_HEADER
from shared.kafka.client import make_consumer
from shared.messages.codec import decode
from shared.settings import Settings

T = TypeVar("T")

PRODUCTS = ("washer", "fabric")
IMAGE_SIZE = 96  # frames and model input: small keeps two cores fast
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LineModels:
    a: Path
    b: Path
    version_a: str
    version_b: str


_models: LineModels | None = None


def line_models(tmp_path_factory: pytest.TempPathFactory) -> LineModels:
    """Two real models (different seeds, so different versions), fitted once per session."""
    global _models
    if _models is None:
        from shared.engine.config import FitConfig
        from shared.engine.fitting import fit_model
        from shared.engine.persistence import save_model
        from shared.synthetic import render_sample

        root = tmp_path_factory.mktemp("line-models")
        paths, versions = [], []
        for seed in (0, 1):
            rng = np.random.default_rng(seed)
            data = {p: [render_sample(p, rng, IMAGE_SIZE)[0] for _ in range(10)] for p in PRODUCTS}
            model = fit_model(data, FitConfig(input_size=IMAGE_SIZE, bank_size=300, seed=seed))
            path = root / f"model-{seed}"
            save_model(model, path)
            paths.append(path)
            versions.append(model.version)
        assert versions[0] != versions[1]
        _models = LineModels(paths[0], paths[1], versions[0], versions[1])
    return _models


def sim_options(**changes: Any) -> SimOptions:
    options = SimOptions(products=PRODUCTS, size=IMAGE_SIZE, pool=16, defect_rate=0.3, rate=20.0, count=20)
    for name, value in changes.items():
        setattr(options, name, value)
    return options


def scorer_settings(settings: Settings, **scorer: Any) -> Settings:
    """Test settings for a scorer: its own group and transactional ids, short session timeout."""
    values = {
        "group_id": f"{settings.topic_prefix}-scorer",
        "transactional_id_prefix": f"{settings.topic_prefix}-txn",
        "session_timeout_ms": 6000,
        "torch_threads": 1,
        "decode_threads": 1,
        **scorer,
    }
    return settings.model_copy(update={"scorer": settings.scorer.model_copy(update=values)})


@dataclass
class Received:
    """Messages read from one topic: decoded values with their headers, in read order."""

    items: list[tuple[Any, list[tuple[str, bytes]]]] = field(default_factory=list)

    @property
    def values(self) -> list[Any]:
        return [value for value, _ in self.items]


class TopicReader:
    """Reads a topic with read_committed from the beginning, in the background, for the whole test."""

    def __init__(self, settings: Settings, name: str, message_type: type | None) -> None:
        """``message_type=None`` keeps raw values (for topics that hold bad records on purpose)."""
        self.settings = settings
        self.topic = settings.topic(name)
        self.message_type = message_type
        self.received = Received()
        self._seen: set[tuple[int, int]] = set()  # (partition, offset): a re-read is not a second message
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TopicReader:
        consumer = make_consumer(self.settings, self.topic, group_id=None)
        await consumer.start()
        self._task = asyncio.create_task(self._read(consumer))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _read(self, consumer: Any) -> None:
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for r in records:
                        if (r.partition, r.offset) in self._seen:
                            continue
                        self._seen.add((r.partition, r.offset))
                        value = r.value if self.message_type is None else decode(r.value, self.message_type)
                        self.received.items.append((value, list(r.headers or ())))
        finally:
            await consumer.stop()

    def __len__(self) -> int:
        return len(self.received.items)

    async def wait_for(self, count: int, timeout: float, settle: float = 1.5) -> Received:
        """Wait until ``count`` messages arrived, then ``settle`` seconds more to catch any extra."""
        deadline = time.monotonic() + timeout
        while len(self) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.topic}: {len(self)} of {count} messages after {timeout}s")
            assert self._task is not None and not self._task.done(), "reader stopped"
            await asyncio.sleep(0.1)
        await asyncio.sleep(settle)
        return self.received


def frame_id_of(headers: list[tuple[str, bytes]]) -> str | None:
    for key, value in headers:
        if key == FRAME_ID_HEADER:
            return value.decode()
    return None


def traceparent_trace_id(headers: list[tuple[str, bytes]]) -> str | None:
    for key, value in headers:
        if key == "traceparent":
            return value.decode().split("-")[1]
    return None


@dataclass
class RunningScorer:
    service: Any  # services.scorer.service.ScorerService
    holder: Any  # services.scorer.models.ModelHolder
    watcher: Any  # services.scorer.models.ModelWatcher
    stop: asyncio.Event


@contextlib.asynccontextmanager
async def running_scorer(settings: Settings, model_dir: Path) -> AsyncIterator[RunningScorer]:
    """A scorer in this process (the service's own classes), stopped gracefully on exit."""
    from services.scorer.models import ModelHolder, ModelWatcher, load_model_dir
    from services.scorer.service import ScorerService

    holder = ModelHolder(await asyncio.to_thread(load_model_dir, model_dir))
    running = RunningScorer(
        ScorerService(settings, holder),
        holder,
        ModelWatcher(settings, holder, from_latest=False),
        asyncio.Event(),
    )
    watcher = asyncio.create_task(running.watcher.run())
    task = asyncio.create_task(running.service.run(running.stop))
    try:
        yield running
    finally:
        running.stop.set()
        try:
            await asyncio.wait_for(task, 60)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment for a subprocess service with the same configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    env.update(
        {
            "LINEGUARD_KAFKA_BOOTSTRAP": settings.bootstrap,
            "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix,
            "LINEGUARD_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for name, value in settings.scorer.model_dump(mode="json").items():
        if value is not None:
            env[f"LINEGUARD_SCORER__{name.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    return env


class ScorerProcess:
    """``lineguard scorer`` as a real subprocess, with its JSON log in a file."""

    def __init__(
        self, settings: Settings, model_dir: Path, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        """``env``: more environment variables (e.g. ``LINEGUARD_METRICS_PORT``)."""
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()/kill()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "scorer", "--model", str(model_dir)],
            cwd=REPO_ROOT,
            env={**settings_env(settings), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for_log(self, needle: str, timeout: float) -> None:
        await wait_until(
            lambda: needle in self.log_text() or self.process.poll() is not None, timeout, needle
        )
        if needle not in self.log_text():
            raise AssertionError(
                f"scorer exited ({self.process.returncode}) before {needle!r}:\n{self.log_text()[-3000:]}"
            )

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._log.close()

    async def terminate(self, timeout: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.process.poll() is None:
            self.kill()
            raise AssertionError(
                f"scorer did not exit within {timeout}s of SIGTERM:\n{self.log_text()[-3000:]}"
            )
        self._log.close()
        return self.process.returncode


def tampered_copy(model_dir: Path, target: Path) -> Path:
    """A copy of a model with one byte of its tensors changed (the manifest left as it was)."""
    shutil.copytree(model_dir, target)
    tensors = target / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    return target
