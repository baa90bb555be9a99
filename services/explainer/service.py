"""The explainer's thin async shell around ``core.Explainer``.

Consumes ``defects`` (committed data only, its own consumer group, never on the verdict path),
runs up to ``max_pending`` events at once (VLM calls are further limited by the explainer's own
concurrency and rate limits), publishes one ``Report`` per event on ``reports`` and commits an
event's offset only after its report is on disk and on the topic. Held events stay uncommitted
and are retried in process; undecodable records go to the DLQ whole. SIGTERM stops fetching,
lets the events in flight finish (up to the request timeout), commits and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.explainer import metrics
from shared.errors import ClaimCheckError
from shared.frames_store import ClaimStore, image_of
from shared.limits import MAX_IMAGE_BYTES, MAX_PIXELS
from shared.settings import Settings
from shared.telemetry.logging import log_event, record_position
from shared.telemetry.tracing import ConsumedMessage

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.structs import ConsumerRecord, TopicPartition

    from services.explainer.core import EventResult, Explainer
    from services.explainer.document import ReportDocument

log = logging.getLogger("lineguard.explainer.service")
SERVICE = "explainer"
# A report's message is timestamped when sent, after the report was written; the slack covers a
# broker that stamps with its own clock (LogAppendTime) a little behind ours.
_SCAN_SLACK_MS = 60_000


@dataclass
class _Held:
    record: ConsumerRecord
    first_seen: float
    due: float
    failed: bool  # held after an internal error, not by the hold policy


async def run_explainer(
    settings: Settings, stop: asyncio.Event, *, max_events: int = 0, explainer: Explainer | None = None
) -> int:
    """Run until ``stop`` is set (or ``max_events`` events are done); returns the number done."""
    from aiokafka import ConsumerRebalanceListener

    from services.explainer.core import build_explainer
    from services.explainer.offsets import OffsetTracker
    from shared.kafka.client import make_consumer, make_producer

    service = _Service(settings, explainer or build_explainer(settings.explainer), OffsetTracker())
    consumer = make_consumer(settings, group_id=settings.explainer.group_id, isolation_level="read_committed")
    producer = make_producer(settings)

    class Listener(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked: Any) -> None:
            await service.on_revoked(consumer, set(revoked))

        async def on_partitions_assigned(self, assigned: Any) -> None:
            return None

    await producer.start()
    try:
        await consumer.start()
        try:
            consumer.subscribe([settings.topic("defects")], listener=Listener())
            return await service.loop(consumer, producer, stop, max_events)
        finally:
            await consumer.stop()
    finally:
        await producer.stop()
        await service.explainer.aclose()


class _Service:
    def __init__(self, settings: Settings, explainer: Explainer, tracker: Any) -> None:
        self.settings = settings
        self.explainer = explainer
        self.tracker = tracker
        self.claims = ClaimStore.from_settings(settings)  # claim-checked frames are fetched from it
        self.in_flight: dict[asyncio.Task[EventResult | None], tuple[Any, ConsumerRecord, float]] = {}
        self.held: list[_Held] = []
        self.next_offset: dict[Any, int] = {}  # per partition: the offset after the last one read
        self.done = 0
        self._scan_lock = asyncio.Lock()

    async def loop(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, stop: asyncio.Event, max_events: int
    ) -> int:
        cfg = self.settings.explainer
        log_event(
            log,
            "explainer_started",
            group_id=cfg.group_id,
            endpoint=bool(self.explainer.vlm),
            model=cfg.model if self.explainer.vlm else "",
            language=cfg.language,
        )
        while not stop.is_set() and not (max_events and self.done >= max_events):
            busy = len(self.in_flight) + len(self.held) >= cfg.max_pending
            assignment = consumer.assignment()
            if busy:
                consumer.pause(*assignment)
            else:
                consumer.resume(*assignment)
            # Keep polling even when paused: it keeps the group membership alive.
            batches = await consumer.getmany(
                timeout_ms=100, max_records=max(1, cfg.max_pending - len(self.in_flight))
            )
            now = time.time()
            for tp, records in batches.items():
                for record in records:
                    metrics.EVENTS_CONSUMED.inc()
                    self.tracker.received(tp, record.offset)
                    self.next_offset[tp] = record.offset + 1
                    self._start(tp, record, now, producer)
            for held in [h for h in self.held if h.due <= now]:
                self.held.remove(held)
                tp = _tp(held.record)
                self._start(tp, held.record, held.first_seen, producer, held.failed)
            await self._collect(wait=0.05 if self.in_flight else 0)
            await self._commit(consumer)
            await self._observe_lag(consumer)
        # Shutdown: finish the calls in progress and commit; events still waiting for a call and
        # held events stay uncommitted for next time.
        self.explainer.stopping = True
        if self.in_flight:
            await asyncio.wait(list(self.in_flight), timeout=self.settings.explainer.request_timeout_s + 5)
            await self._collect(wait=0)
        await self._commit(consumer)
        log_event(log, "explainer_stopped", done=self.done, held=len(self.held))
        return self.done

    def _start(
        self,
        tp: Any,
        record: ConsumerRecord,
        first_seen: float,
        producer: AIOKafkaProducer,
        failed: bool = False,
    ) -> None:
        task = asyncio.create_task(self._process(record, first_seen, producer, failed))
        self.in_flight[task] = (tp, record, first_seen)

    async def _collect(self, wait: float) -> None:
        if not self.in_flight:
            metrics.HELD_EVENTS.set(len(self.held))
            return
        finished, _ = await asyncio.wait(list(self.in_flight), timeout=wait)
        for task in finished:
            tp, record, first_seen = self.in_flight.pop(task)
            result = task.result()
            if result is None or result.kind != "held":
                self.tracker.finished(tp, record.offset)
                self.done += 1
            else:
                failed = result.hold_reason == "internal_error"
                self.held.append(_Held(record, first_seen, time.time() + result.retry_after_s, failed))
        metrics.HELD_EVENTS.set(len(self.held))

    async def _process(
        self, record: ConsumerRecord, first_seen: float, producer: AIOKafkaProducer, failed_before: bool
    ) -> EventResult | None:
        """Report on one record. None: the record went to the DLQ. Failures of our own (disk,
        Kafka) hold the event instead of dropping it; one that failed so until its report is due
        gets the fallback report (``failed_before``: its last try ended in such a failure)."""
        from services.explainer.core import EventResult
        from shared.messages.codec import MessageError, decode, encode
        from shared.messages.schemas import DefectEvent, Report

        try:
            event = decode(record.value, DefectEvent)
        except MessageError as exc:
            await self._dead_letter(producer, record, exc.reason, exc.detail)
            return None
        image = None
        if event.image_ref is not None:  # fetched and verified once, before anything else is done
            try:
                image = await asyncio.to_thread(
                    image_of, event, self.claims, max_bytes=MAX_IMAGE_BYTES, max_pixels=MAX_PIXELS
                )
            except ClaimCheckError as exc:
                detail = f"frame {event.verdict.frame_id}: {exc.detail}"
                await self._dead_letter(producer, record, exc.reason, detail)
                return None

        async def publish(message: Report, headers: list[tuple[str, bytes]]) -> None:
            await producer.send_and_wait(
                self.settings.topic("reports"),
                encode(message),
                key=message.station_id.encode(),
                headers=headers,
            )

        cfg = self.settings.explainer
        overdue = time.time() - first_seen >= cfg.max_hold_s
        try:
            return await self.explainer.handle(
                event,
                headers=record.headers,
                first_seen=first_seen,
                publish=publish,
                on_topic=lambda document: self._on_topic(document, producer),
                # Failed until its report was due: the fallback, without the VLM (issue 9).
                fallback_reason="internal_error" if overdue and failed_before else "",
                image=image,
                consumed=ConsumedMessage(record.topic, record.partition, record.offset, record.key),
            )
        except Exception as exc:  # never lose the event: hold it and try again later
            log_event(
                log,
                "event_failed",
                logging.ERROR,
                frame_id=event.verdict.frame_id,
                error=f"{type(exc).__name__}: {exc}"[:500],
            )
            left = max(0.0, first_seen + cfg.max_hold_s - time.time())
            return EventResult(
                "held", hold_reason="internal_error", retry_after_s=min(cfg.hold_retry_s, left)
            )

    async def _on_topic(self, document: ReportDocument, producer: AIOKafkaProducer) -> bool:
        """Is the ``Report`` of ``document`` on the ``reports`` topic (committed)? Scans every
        partition from shortly before the report was written to the end: only asked after a crash
        or a failed send, and reports are few. Raises if the topic cannot be read to its end in
        time (the event is then held and asked again)."""
        from aiokafka.errors import KafkaError
        from aiokafka.structs import TopicPartition

        from shared.kafka.client import make_consumer
        from shared.messages.codec import MessageError, decode
        from shared.messages.schemas import Report

        topic = self.settings.topic("reports")
        async with self._scan_lock:
            partitions = await producer.partitions_for(topic)  # fetches the metadata if needed
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer = make_consumer(self.settings, group_id=None)
            await consumer.start()
            try:
                consumer.assign(tps)
                since_ms = document.created_at // 1_000_000 - _SCAN_SLACK_MS
                deadline = time.monotonic() + self.settings.explainer.request_timeout_s
                while True:  # leadership may be moving: retry what the client calls retriable
                    try:
                        starts = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
                        ends = await consumer.end_offsets(tps)
                        break
                    except KafkaError as exc:
                        if not exc.retriable or time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
                for tp in tps:
                    found = starts.get(tp)
                    consumer.seek(tp, found.offset if found is not None else ends[tp])
                while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"could not read {topic} to its end to look for a report")
                    for records in (await consumer.getmany(timeout_ms=200)).values():
                        for r in records:
                            try:
                                report = decode(r.value, Report)
                            except MessageError:
                                continue
                            if (report.frame_id, report.line_id, report.station_id, report.captured_at) == (
                                document.frame_id,
                                document.line_id,
                                document.station_id,
                                document.captured_at,
                            ):
                                return True
                return False
            finally:
                await consumer.stop()

    async def _dead_letter(
        self, producer: AIOKafkaProducer, record: ConsumerRecord, reason: str, detail: str
    ) -> None:
        from shared.messages.codec import encode
        from shared.messages.schemas import DeadLetter

        metrics.DEAD_LETTERS.labels(metrics.code_label(reason)).inc()
        letter = DeadLetter.for_record(record, reason=reason, detail=detail, service=SERVICE)
        await producer.send_and_wait(self.settings.topic("dlq"), encode(letter), key=record.key)
        log_event(log, "dead_letter", logging.WARNING, reason=reason, **record_position(record))

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        positions = self.tracker.committable()
        if not positions:
            return
        from aiokafka.structs import OffsetAndMetadata

        await consumer.commit({tp: OffsetAndMetadata(pos, "") for tp, pos in positions.items()})
        self.tracker.mark_committed(positions)

    async def on_revoked(self, consumer: AIOKafkaConsumer, revoked: set[TopicPartition]) -> None:
        """Finish and commit what belongs to partitions we lose; held events for them are dropped
        here uncommitted, so their new owner receives them again."""
        mine = [t for t, (tp, _, _) in self.in_flight.items() if tp in revoked]
        if mine:
            await asyncio.wait(mine, timeout=self.settings.explainer.request_timeout_s)
            await self._collect(wait=0)
        with contextlib.suppress(Exception):  # the group may already be gone on shutdown
            await self._commit(consumer)
        self.held = [h for h in self.held if _tp(h.record) not in revoked]
        for tp in revoked:
            self.tracker.forget(tp)

    async def _observe_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Events behind the end of each partition: from the consumer's position, which steps over
        transaction markers (each scorer commit leaves one after its records), not from the offset
        after the last event read, which would count the marker as an unread event."""
        for tp in consumer.assignment():
            end = consumer.last_stable_offset(tp) or consumer.highwater(tp)
            if end is None or tp not in self.next_offset:
                continue
            try:
                position = await asyncio.wait_for(consumer.position(tp), 1.0)
            except Exception:  # unknown just now (a rebalance): the offset after the last read
                position = self.next_offset[tp]
            metrics.CONSUMER_LAG.labels(str(tp.partition)).set(
                max(0, end - max(position, self.next_offset[tp]))
            )


def _tp(record: ConsumerRecord) -> TopicPartition:
    from aiokafka.structs import TopicPartition

    return TopicPartition(record.topic, record.partition)
