"""Model hot swap: the model serving now, and the watcher that loads announced models in the background.

The watcher reads the compacted ``models`` topic with its own group-less consumer. At start it reads
the topic's history: the newest announcement it would take sets the replay watermark, and is the
model to serve when the scorer starts without one. Each new announcement passes the gate first
(signed by a trusted key, not a replay, not from the future: ``trust.py``), then is loaded and
verified in a worker thread while the current model keeps scoring: its directory must lie inside the
models root, its manifest digest must be the announced one, and every byte parsed is a byte hashed
(``shared.engine.artifacts``). Only a model that loads and warms up cleanly is offered, and the
scorer takes it between batches (``ModelHolder.current``), so no batch is ever scored by two models.
Anything else is refused with a reason (a metric and a log line) and the old model stays; nothing an
announcement holds can stop the watcher.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.scorer import metrics
from services.scorer.metrics import REFUSAL_REASONS
from services.scorer.trust import AnnouncementGate, load_trusted_keys
from shared.engine.config import RuntimeOptions
from shared.errors import ArtifactError, LineguardError, MessageError, ModelRefused
from shared.messages.codec import decode
from shared.messages.schemas import ModelAnnouncement
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.scorer.models")

MAX_REMEMBERED_REFUSALS = 100


@dataclass
class ServingModel:
    model: Any  # shared.engine.model.InspectionModel
    version: str
    source: str  # where it came from: a directory or an announcement
    manifest_sha256: str | None = None


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
        metrics.prepare_classes(c.name for c in serving.model.class_models)


def announcement_for(path: Path, *, models_root: Path, announced_at: int | None = None) -> ModelAnnouncement:
    """The (unsigned) announcement of a model directory inside ``models_root``, naming it relative to
    the root, so that scorers that mount the root elsewhere find it too. Reads and verifies it."""
    from shared.engine.artifacts import read_artifact

    try:
        artifact = read_artifact(path, root=models_root)
    except ArtifactError as exc:
        raise ModelRefused(str(exc), reason=_artifact_reason(exc)) from exc
    version = artifact.manifest.get("model_version")
    if not isinstance(version, str) or not version:
        raise ModelRefused(f"{path}: the manifest names no model version", reason="bad_artifact")
    return ModelAnnouncement(
        model_version=version,
        path=str(artifact.path.relative_to(os.path.realpath(models_root))),
        announced_at=announced_at if announced_at is not None else time.time_ns(),
        sha256=str(artifact.manifest["manifest_sha256"]),
    )


def _artifact_reason(exc: ArtifactError) -> str:
    return exc.reason if exc.reason in ("outside_models_root", "digest_mismatch") else "bad_artifact"


def load_model_dir(
    path: Path,
    *,
    root: Path | None = None,
    weights_dir: Path | None = None,
    expected_sha256: str | None = None,
    expected_version: str | None = None,
    source: str | None = None,
    options: RuntimeOptions | None = None,
    review_until_confirmed: int | None = None,
) -> ServingModel:
    """Load and verify a model directory (blocking: run it in a worker thread).

    ``root``: the directory must lie inside it (announced models); a relative ``path`` is relative to
    it. ``expected_sha256``: the manifest digest the announcement names. ``options``: the runtime,
    device and precision of the backbone (``ScorerSettings.runtime_options``). ``review_until_confirmed``:
    the scorer's cold-start setting (None: each class's manifest decides). Raises ``ModelRefused``
    with a reason from ``REFUSAL_REASONS``.
    """
    from shared.engine.artifacts import read_artifact
    from shared.engine.persistence import model_from_artifact

    try:
        # The announced digest is checked before any file but the manifest is read.
        artifact = read_artifact(path, root=root, manifest_sha256=expected_sha256)
        actual = str(artifact.manifest["manifest_sha256"])
        model = model_from_artifact(artifact, weights_dir=weights_dir, options=options)
    except ArtifactError as exc:
        raise ModelRefused(f"{type(exc).__name__}: {exc}", reason=_artifact_reason(exc)) from exc
    except OSError as exc:
        raise ModelRefused(f"{type(exc).__name__}: {exc}", reason="bad_artifact") from exc
    if expected_version is not None and model.version != expected_version:
        raise ModelRefused(
            f"model at {path} is version {model.version!r}, announced as {expected_version!r}",
            reason="version_mismatch",
        )
    model.review_until_confirmed = review_until_confirmed
    try:
        warm_up(model)
    except ModelRefused:
        raise
    except Exception as exc:  # a model that cannot score a plain frame must not go on the line
        raise ModelRefused(
            f"model at {path} failed its warm-up batch: {type(exc).__name__}: {exc}", reason="warm_up_failed"
        ) from exc
    return ServingModel(
        model=model, version=model.version, source=source or str(path), manifest_sha256=actual
    )


def warm_up(model: Any) -> None:
    """Score two plain grey frames. The first calls of a model (and of each thread that runs it) pay
    for lazy initialisation, hundreds of ms that the first real frames would otherwise wait for.
    Their scores must be finite (score, raw score and threshold): a model that scores NaN would
    pass every part."""
    import numpy as np

    from services.scorer.core import non_finite_numbers

    frame = np.full((model.input_size, model.input_size, 3), 128, dtype=np.uint8)
    for result in model.score_batch([frame, frame]):
        bad = non_finite_numbers(result)
        if bad:
            found = ", ".join(f"{name}={value}" for name, value in bad.items())
            raise ModelRefused(
                f"the warm-up batch scored non-finite values (class {result.product_class}: {found})",
                reason="warm_up_failed",
            )


async def _positions(consumer: Any, tps: list[Any]) -> list[int]:
    return [await consumer.position(tp) for tp in tps]


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
        cfg = settings.scorer
        self._settings = settings
        self._holder = holder
        self._from_latest = from_latest  # serve the newest acceptable announcement already on the topic
        self._loader = loader
        self._models_root: Path = cfg.models_root
        self._weights_dir: Path | None = cfg.weights_dir
        self._options = cfg.runtime_options()
        self._review_until_confirmed: int | None = cfg.review_until_confirmed
        self.gate = AnnouncementGate(
            load_trusted_keys(cfg.trusted_keys), max_skew_ns=int(cfg.announcement_max_skew_s * 1e9)
        )
        self.refused: list[str] = []  # versions refused, newest last (for logs and tests)
        self._say_trust()

    def _say_trust(self) -> None:
        """One line at start: whether announcements must be signed, and by which keys."""
        if self.gate.signed:
            log_event(
                log,
                "model_announcements_signed",
                trusted_signers=sorted(self.gate.trusted),  # key ids: a field named *key* would be masked
                models_root=str(self._models_root),
            )
        else:
            log_event(
                log,
                "model_announcements_unsigned",
                logging.WARNING,
                detail="no trusted signing keys are configured (LINEGUARD_SCORER__TRUSTED_KEYS): anyone who "
                "can write to the models topic can announce a model",
                models_root=str(self._models_root),
            )

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
            newer = await self._read_history(consumer, tps, ends)
            if newer:
                await self.consider(newer)
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                values = [r.value for rs in batches.values() for r in rs]
                if values:
                    await self.consider(values)
        finally:
            await consumer.stop()

    async def _read_history(self, consumer: Any, tps: list[Any], ends: dict[Any, int]) -> list[bytes]:
        """Read the topic up to ``ends``: the newest announcement the gate would take sets its replay
        watermark (and is loaded when starting without a model). Returns what arrived after ``ends``."""
        await consumer.seek_to_beginning(*tps)
        best: ModelAnnouncement | None = None
        newer: list[bytes] = []
        while any(
            position < ends[tp] for tp, position in zip(tps, await _positions(consumer, tps), strict=True)
        ):
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        newer.append(record.value)
                        continue
                    announcement = self._acceptable(record.value)
                    if announcement is not None and (
                        best is None or announcement.announced_at > best.announced_at
                    ):
                        best = announcement
        if best is None:
            return newer
        if self._from_latest:
            await self._take(best)
        else:
            self.gate.admit(best)
            log_event(
                log, "model_announcement_history", latest=best.model_version, announced_at=best.announced_at
            )
        return newer

    def _acceptable(self, value: bytes | None) -> ModelAnnouncement | None:
        """The announcement in ``value`` if the gate would take it now (history: no metrics)."""
        try:
            announcement = decode(value or b"", ModelAnnouncement)
            self.gate.check(announcement)
        except (MessageError, ModelRefused):
            return None
        return announcement

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

    async def consider(self, values: Sequence[bytes | None]) -> None:
        """New records from the topic: each is checked; the newest acceptable one is loaded. Never raises
        for anything a record holds."""
        newest: ModelAnnouncement | None = None
        for value in values:
            try:
                announcement = decode(value or b"", ModelAnnouncement)
            except MessageError as exc:
                self._refuse(None, "malformed", f"{exc.reason}: {exc.detail}")
                continue
            try:
                self.gate.check(announcement)
            except ModelRefused as exc:
                self._refuse(announcement, exc.reason, str(exc))
                continue
            if newest is None or announcement.announced_at > newest.announced_at:
                newest = announcement
        if newest is not None:
            await self._take(newest)

    async def _take(self, announcement: ModelAnnouncement) -> None:
        """Load an announcement the gate accepts and offer its model."""
        self.gate.admit(announcement)
        if announcement.model_version == self._holder.latest_version:
            return
        started = time.monotonic()
        log_event(
            log,
            "model_loading",
            version=announcement.model_version,
            path=announcement.path,
            key_id=announcement.key_id or None,
        )
        try:
            candidate = await asyncio.to_thread(
                self._loader,
                Path(announcement.path),
                root=self._models_root,
                weights_dir=self._weights_dir,
                expected_sha256=announcement.sha256,
                expected_version=announcement.model_version,
                source=f"announcement {announcement.model_version}",
                options=self._options,
                review_until_confirmed=self._review_until_confirmed,
            )
        except ModelRefused as exc:
            self._refuse(announcement, exc.reason, str(exc))
            return
        except Exception as exc:  # MemoryError, a library's own error: refuse it, keep watching
            self._refuse(announcement, "load_failed", f"{type(exc).__name__}: {exc}")
            return
        self._holder.offer(candidate)
        log_event(log, "model_ready", version=candidate.version, seconds=round(time.monotonic() - started, 3))

    def _refuse(self, announcement: ModelAnnouncement | None, reason: str, detail: str) -> None:
        label = reason if reason in REFUSAL_REASONS else "load_failed"
        metrics.MODEL_LOAD_FAILURES.inc()
        metrics.MODEL_ANNOUNCEMENTS_REFUSED.labels(label).inc()
        if announcement is not None:
            self.refused.append(announcement.model_version)
            del self.refused[:-MAX_REMEMBERED_REFUSALS]
        log_event(
            log,
            "model_refused",
            logging.ERROR,
            reason=label,
            version=announcement.model_version if announcement else None,
            path=announcement.path if announcement else None,
            key_id=(announcement.key_id or None) if announcement else None,
            detail=detail[:1000],
            serving=self._holder.version,
        )
