"""Model hot swap: the model serving now, and the watcher that loads announced models in the background.

The watcher reads the compacted ``models`` topic with its own group-less consumer. A new
announcement is loaded and verified in a worker thread while the current model keeps scoring; only a
model that loads cleanly is offered, and the scorer takes it between batches (``ModelHolder.current``),
so no batch is ever scored by two models. A model that fails is refused and the old one stays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.scorer import metrics
from shared.errors import ArtifactError, LineguardError, MessageError, ModelRefused
from shared.messages.codec import decode
from shared.messages.schemas import ModelAnnouncement
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.scorer.models")


@dataclass
class ServingModel:
    model: Any  # shared.engine.model.InspectionModel
    version: str
    source: str  # where it came from: a directory or an announcement


class ModelHolder:
    """The model in use, plus at most one verified model waiting to be swapped in."""

    def __init__(self, serving: ServingModel | None = None) -> None:
        self._serving = serving
        self._pending: ServingModel | None = None
        self._available = asyncio.Event()
        if serving is not None:
            self._publish_info(serving)
            self._available.set()

    @property
    def version(self) -> str | None:
        return self._serving.version if self._serving else None

    @property
    def latest_version(self) -> str | None:
        """The version that will serve after the next swap."""
        pending = self._pending or self._serving
        return pending.version if pending else None

    def offer(self, candidate: ServingModel) -> None:
        """Queue a verified model; the newest offer wins."""
        self._pending = candidate
        self._available.set()

    async def wait_available(self) -> None:
        await self._available.wait()

    def current(self) -> ServingModel:
        """The model for the next batch; swaps in a pending model (call between batches only)."""
        if self._pending is not None:
            previous, self._serving, self._pending = self._serving, self._pending, None
            metrics.MODEL_SWAPS.inc()
            self._publish_info(self._serving)
            log_event(
                log,
                "model_swapped",
                previous=previous.version if previous else None,
                version=self._serving.version,
                source=self._serving.source,
            )
        if self._serving is None:
            raise RuntimeError("no model loaded yet")
        return self._serving

    @staticmethod
    def _publish_info(serving: ServingModel) -> None:
        metrics.MODEL_INFO.info({"version": serving.version, "source": serving.source})
        metrics.CLASS_THRESHOLD.clear()
        for class_model in serving.model.class_models:
            metrics.CLASS_THRESHOLD.labels(class_model.name).set(class_model.threshold)


def announced_digest(path: Path) -> str:
    """The digest an announcement carries for the model at ``path``: its manifest's own digest.

    The manifest lists every file's sha256 and carries a digest of itself, so this one value pins
    the whole artifact; reading it also verifies every file (``ArtifactError`` if any differs).
    """
    from shared.engine.artifacts import read_manifest

    return str(read_manifest(path)["manifest_sha256"])


def announcement_for(path: Path, *, announced_at: int | None = None) -> ModelAnnouncement:
    """The announcement of a verified model directory (for ``lineguard announce`` and tests)."""
    from shared.engine.artifacts import read_manifest

    manifest = read_manifest(path)
    version = manifest.get("version") or manifest.get("model_version")
    if not isinstance(version, str) or not version:
        raise ModelRefused(f"{path}: the manifest names no model version")
    return ModelAnnouncement(
        model_version=version,
        path=str(path),
        announced_at=announced_at if announced_at is not None else time.time_ns(),
        sha256=str(manifest["manifest_sha256"]),
    )


async def publish_announcement(settings: Any, announcement: ModelAnnouncement) -> None:
    """Put an announcement on the compacted ``models`` topic under its single key."""
    from shared.kafka.client import make_producer
    from shared.kafka.topics import MODEL_ANNOUNCEMENT_KEY
    from shared.messages.codec import encode

    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topic("models"), encode(announcement), key=MODEL_ANNOUNCEMENT_KEY
        )
    finally:
        await producer.stop()


def load_model_dir(
    path: Path,
    *,
    expected_sha256: str | None = None,
    expected_version: str | None = None,
    source: str | None = None,
) -> ServingModel:
    """Load and verify a model directory (blocking: run it in a worker thread)."""
    from shared.engine.persistence import load_model

    path = Path(path)
    try:
        if expected_sha256 is not None:
            actual = announced_digest(path)
            if actual != expected_sha256:
                raise ModelRefused(f"manifest sha256 {actual} does not match the announced {expected_sha256}")
        model = load_model(path)
    except (ArtifactError, OSError) as exc:
        raise ModelRefused(f"{type(exc).__name__}: {exc}") from exc
    if expected_version is not None and model.version != expected_version:
        raise ModelRefused(f"model at {path} is version {model.version!r}, announced as {expected_version!r}")
    try:
        warm_up(model)
    except Exception as exc:  # a model that cannot score a plain frame must not go on the line
        raise ModelRefused(f"model at {path} failed its warm-up batch: {type(exc).__name__}: {exc}") from exc
    return ServingModel(model=model, version=model.version, source=source or str(path))


def warm_up(model: Any) -> None:
    """Score two plain grey frames. The first calls of a model (and of each thread that runs it) pay
    for lazy initialisation, hundreds of ms that the first real frames would otherwise wait for.
    Their scores must be finite: a model that gives NaN or infinity for a plain frame is refused."""
    import numpy as np

    from services.scorer.core import non_finite_numbers

    frame = np.full((model.input_size, model.input_size, 3), 128, dtype=np.uint8)
    for result in model.score_batch([frame, frame]):
        bad = non_finite_numbers(result)
        if bad:
            found = ", ".join(f"{name}={value}" for name, value in bad.items())
            raise ModelRefused(f"class {result.product_class}: warm-up gave non-finite {found}")


class ModelWatcher:
    """Follows the ``models`` topic and offers each newly announced, verified model to the holder."""

    def __init__(
        self,
        settings: Any,
        holder: ModelHolder,
        *,
        from_latest: bool,
        loader: Callable[..., ServingModel] = load_model_dir,
    ) -> None:
        self._settings = settings
        self._holder = holder
        self._from_latest = from_latest  # also consider the announcement already on the topic
        self._loader = loader
        self.refused: list[str] = []  # versions refused, newest last (for logs and tests)

    async def run(self) -> None:
        from aiokafka import TopicPartition

        from shared.kafka.client import make_consumer

        topic = self._settings.topic("models")
        consumer = make_consumer(self._settings, group_id=None)
        await consumer.start()
        try:
            partitions = await self._partitions(consumer, topic)
            tps = [TopicPartition(topic, p) for p in partitions]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                # The compacted topic's last record is the model to serve; older ones are history.
                consumer.seek(tp, max(0, ends[tp] - 1) if self._from_latest else ends[tp])
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                records = [r for rs in batches.values() for r in rs]
                if records:
                    await self._consider(records[-1].value)
        finally:
            await consumer.stop()

    @staticmethod
    async def _partitions(consumer: Any, topic: str) -> list[int]:
        """The models topic's partitions, from the topic table (one: it holds a single key)."""
        from shared.kafka.topics import topic_spec

        for _ in range(60):
            if topic in await consumer.topics():
                return list(range(topic_spec("models").partitions or 1))
            await asyncio.sleep(0.5)
        raise LineguardError(
            f"topic {topic} does not exist; run `lineguard topics ensure`", reason="no_topic"
        )

    async def _consider(self, value: bytes) -> None:
        try:
            announcement = decode(value, ModelAnnouncement)
        except MessageError as exc:
            metrics.MODEL_LOAD_FAILURES.inc()
            log_event(log, "model_announcement_invalid", logging.ERROR, reason=exc.reason, detail=str(exc))
            return
        if announcement.model_version == self._holder.latest_version:
            return
        started = time.monotonic()
        log_event(log, "model_loading", version=announcement.model_version, path=announcement.path)
        try:
            candidate = await asyncio.to_thread(
                self._loader,
                Path(announcement.path),
                expected_sha256=announcement.sha256,
                expected_version=announcement.model_version,
                source=f"announcement {announcement.model_version}",
            )
        except ModelRefused as exc:
            metrics.MODEL_LOAD_FAILURES.inc()
            self.refused.append(announcement.model_version)
            log_event(
                log,
                "model_refused",
                logging.ERROR,
                version=announcement.model_version,
                path=announcement.path,
                detail=str(exc),
                serving=self._holder.version,
            )
            return
        self._holder.offer(candidate)
        log_event(log, "model_ready", version=candidate.version, seconds=round(time.monotonic() - started, 3))
