"""The console's async shell: read the topics into the state, serve the pages, send feedback.

One group-less consumer, assigned every partition of ``verdicts``, ``defects``, ``reports``,
``models``, ``model-history`` and ``feedback`` (it commits nothing and never competes with the
services' groups). At start it reads back the last ``backlog_per_partition`` records of the streams
(the announcement history among them) and the whole of the compacted topics, so a fresh page is not
empty. Records that do not decode are counted and logged
(topic, offset, reason; never their bytes) and skipped: the console reads, it does not own the
topics, so it sends nothing to the dead-letter topic.

A judgement is sent with the producer's acknowledgement from every replica before the page says it
is recorded; when ``LINEGUARD_LABELS__FRAMES_DIR`` is set, the judged frame's image (when held) is
saved to the frames store for ``lineguard labels export``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator
from typing import Any

import uvicorn

from services.console import metrics
from services.console.auth import Authenticator, check_console_auth
from services.console.core import ConsoleState, StateLimits
from services.console.pictures import frame_pixels
from services.console.web import ConsoleContext, build_app
from shared.errors import BrokerError, ImageError, MessageError
from shared.frames_store import ClaimStore, FrameStore
from shared.kafka.client import make_consumer, make_producer, partition_counts
from shared.messages.codec import decode, encode
from shared.messages.schemas import (
    DefectEvent,
    Feedback,
    ModelAnnouncement,
    ModelHistoryEntry,
    Report,
    Verdict,
)
from shared.settings import Settings, from_section, section_fields
from shared.telemetry.logging import log_event, record_position

log = logging.getLogger("lineguard.console")
SERVICE = "console"

# topic -> (message type, read from the start: compacted topics are read whole)
READS: dict[str, tuple[type, bool]] = {
    "verdicts": (Verdict, False),
    "defects": (DefectEvent, False),
    "reports": (Report, False),
    "models": (ModelAnnouncement, True),
    "model-history": (ModelHistoryEntry, False),  # kept forever: only its latest records
    "feedback": (Feedback, True),
}


def state_limits(settings: Settings) -> StateLimits:
    return from_section(StateLimits, settings.console)


class ConsoleService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        cfg = settings.console
        token = check_console_auth(cfg)
        self.auth = Authenticator(
            token,
            proxy_header=cfg.trusted_proxy_header,
            trusted_proxies=cfg.trusted_proxies,
            session_s=cfg.session_hours * 3600,
        )
        self.state = ConsoleState(state_limits(settings))
        self.store = FrameStore(settings.labels.frames_dir) if settings.labels.frames_dir else None
        self.claims = ClaimStore.from_settings(settings)  # claim-checked frames are fetched from it
        self._producer: Any = None
        self.ctx = ConsoleContext(
            state=self.state,
            auth=self.auth,
            publish=self.publish_feedback,
            vocabulary=settings.explainer.vocabulary,
            default_vocabulary=settings.explainer.default_vocabulary,
            report_dir=settings.explainer.report_dir,
            claims=self.claims,
            **section_fields(cfg, ConsoleContext),  # public_read, secure_cookies, the limits
        )
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.settings.console
        consumer = make_consumer(self.settings, group_id=None)
        self._producer = make_producer(self.settings)
        await consumer.start()
        await self._producer.start()
        server = _Server(
            uvicorn.Config(
                build_app(self.ctx),
                host=cfg.host,
                port=cfg.port,
                log_config=None,
                access_log=False,
                lifespan="off",
                server_header=False,
                proxy_headers=False,
                timeout_graceful_shutdown=3,
            )
        )
        serving = asyncio.create_task(server.serve())
        try:
            await self._assign(consumer)
            while not server.started:
                if serving.done():
                    serving.result()  # raises what stopped it (a port in use, ...)
                    raise OSError(f"the console could not listen on {cfg.host}:{cfg.port}")
                await asyncio.sleep(0.05)
            self.ready.set()
            log_event(
                log,
                "console ready",
                url=f"http://{cfg.host}:{cfg.port}/",
                token_sign_in=self.auth.token_sign_in,
                proxy_header=cfg.trusted_proxy_header or "",
                public_read=cfg.public_read,
            )
            while not stop.is_set() and not serving.done():
                batch = await consumer.getmany(timeout_ms=300, max_records=200)
                changed = False
                for tp, records in batch.items():
                    for record in records:
                        changed |= self._take(tp.topic, record)
                if changed:
                    await self.ctx.notify()
        finally:
            self.ctx.stopping.set()
            await self.ctx.notify()
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(serving, 10)
            await consumer.stop()
            await self._producer.stop()
            log_event(log, "console stopped")

    async def _assign(self, consumer: Any) -> None:
        from aiokafka import TopicPartition

        topics = [self.settings.topic(name) for name in READS]
        counts = await partition_counts(self.settings, topics)
        missing = [topic for topic in topics if topic not in counts]
        if missing:
            raise BrokerError(f"no topic {', '.join(missing)}: run `lineguard topics ensure`")
        wanted = [TopicPartition(topic, p) for topic in topics for p in range(counts[topic])]
        consumer.assign(wanted)
        begins = await consumer.beginning_offsets(wanted)
        ends = await consumer.end_offsets(wanted)
        backlog = self.settings.console.backlog_per_partition
        for tp in wanted:
            whole = READS[self._logical(tp.topic)][1]
            consumer.seek(tp, begins[tp] if whole else max(begins[tp], ends[tp] - backlog))

    def _logical(self, topic: str) -> str:
        return topic[len(self.settings.topic_prefix) + 1 :]

    def _take(self, topic: str, record: Any) -> bool:
        name = self._logical(topic)
        metrics.RECORDS.labels(name).inc()
        if record.value is None:  # a tombstone on a compacted topic
            return False
        cls = READS[name][0]
        try:
            message: Any = decode(record.value, cls)
        except MessageError as exc:
            metrics.BAD_RECORDS.labels(name, exc.reason).inc()
            log_event(
                log,
                "record skipped",
                logging.WARNING,
                **record_position(record),
                reason=exc.reason,
                detail=str(exc)[:300],
            )
            return False
        if isinstance(message, Verdict):
            return self.state.add_verdict(message)
        if isinstance(message, DefectEvent):
            return self.state.add_evidence(message)
        if isinstance(message, Report):
            self.state.add_report(message)
        elif isinstance(message, ModelAnnouncement):
            self.state.add_announcement(message)
        elif isinstance(message, ModelHistoryEntry):
            return self.state.add_history(message)
        elif isinstance(message, Feedback):
            self.state.add_feedback(message)
        return True

    async def publish_feedback(self, feedback: Feedback) -> None:
        """Send a judgement (keyed by frame id on the compacted topic), acknowledged by all replicas."""
        await self._producer.send_and_wait(
            self.settings.topic("feedback"), encode(feedback), key=feedback.frame_id.encode()
        )
        self.state.add_feedback(feedback)
        await self.ctx.notify()
        event = self.state.evidence(feedback.frame_id)
        if self.store is not None and event is not None:
            try:
                await asyncio.to_thread(self._save_frame, event)
            except (ImageError, OSError) as exc:  # the judgement is sent; export falls back to the topics
                log_event(log, "frame not saved", logging.WARNING, frame_id=feedback.frame_id, error=str(exc))

    def _save_frame(self, event: DefectEvent) -> None:
        assert self.store is not None
        pixels = frame_pixels(event, self.settings.console.max_image_pixels, self.claims)
        self.store.save(event.verdict.frame_id, pixels)
        metrics.FRAMES_SAVED.inc()


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: the service's ``stop`` event ends it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield
