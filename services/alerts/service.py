"""The alerts service's async shell: operator alerts from the ``alerts`` topic -> a webhook.

Offsets are committed only once every consumed alert is delivered, suppressed as a duplicate, or
handed durably to the DLQ (the producer's acknowledgement awaited). A stop or crash in between
leaves the offsets where they were, so the alerts come again: none is lost, and the delivery
ledger (``ledger.py``, on disk) makes sure none is delivered twice. Without a webhook URL the
service still runs: each alert is logged once (``alert`` at WARNING) and counted as ``logged``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from services.alerts import metrics
from services.alerts.core import Admission, Forwarder, RetryPolicy, log_fields, payload, webhook_url
from services.alerts.ledger import DEAD_LETTERED, DELIVERED, SENDING, DeliveryLedger
from services.alerts.webhook import DeliveryResult, post_json
from shared.settings import Settings
from shared.telemetry.logging import log_event
from shared.tls import client_context

log = logging.getLogger("lineguard.alerts")
SERVICE = "alerts"

# The blocking webhook client (``post_json``'s signature); the service runs it in a worker thread.
Poster = Callable[[str, dict[str, Any], float, dict[str, str] | None, Any], DeliveryResult]


class _Interrupted(BaseException):
    """Stop requested while a delivery was pending: unwind to ``run`` and leave its offsets uncommitted.

    Control flow, not an error (like ``asyncio.CancelledError``, hence ``BaseException``): no
    ``except Exception`` on the way may swallow it, and ``run`` always catches it.
    """


class AlertsService:
    def __init__(
        self,
        settings: Settings,
        url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        poster: Poster = post_json,
    ) -> None:
        """``url``: the webhook; None takes it from the settings (where it may be absent: then
        alerts are logged only)."""
        self.settings = settings
        self.cfg = settings.alerts
        self.url = url if url is not None else webhook_url(settings)
        self.tls = client_context(self.cfg.ca_file, "LINEGUARD_ALERTS__CA_FILE")
        self.clock = clock
        self.poster = poster
        self.forwarder = Forwarder(
            self.cfg.dedup_window_s,
            self.cfg.rate_limit_per_minute,
            self.cfg.rate_limit_burst,
            clock(),
            max_keys=self.cfg.max_tracked,
        )
        self.retry = RetryPolicy(self.cfg.retry_initial_s, self.cfg.retry_max_s, self.cfg.give_up_after_s)
        name = hashlib.sha256(self.cfg.group_id.encode()).hexdigest()[:16]
        self.ledger = DeliveryLedger(
            self.cfg.state_dir / f"deliveries-{name}.jsonl",
            retention_s=self.cfg.ledger_retention_s,
            max_entries=self.cfg.max_tracked,
        )
        for entry in self.ledger.entries():  # the window survives a restart
            if entry.state != DEAD_LETTERED:
                self.forwarder.remember(entry.dedup, entry.raised_at)
        self.ready = asyncio.Event()
        self._held: dict[str, Any] = {}  # alert id -> its record, for the DLQ if the digest fails
        self._stop = asyncio.Event()
        metrics.WEBHOOK_CONFIGURED.set(0 if self.url is None else 1)

    async def run(self, stop: asyncio.Event) -> None:
        from shared.kafka.client import make_consumer, make_producer

        self._stop = stop
        consumer = make_consumer(
            self.settings,
            self.settings.topic("alerts"),
            group_id=self.cfg.group_id,
            auto_offset_reset="latest",
        )
        producer = make_producer(self.settings)
        await consumer.start()
        await producer.start()
        try:
            while not consumer.assignment() and not stop.is_set():
                await consumer.getmany(timeout_ms=100)
            for tp in consumer.assignment():
                await consumer.position(tp)  # resolve "latest" before declaring ready
            # Make the starting point durable: a fresh group that stops before its first commit
            # must not restart at a later "latest" and skip what arrived in between.
            await consumer.commit()
            self.ready.set()
            log_event(
                log,
                "alerts forwarder ready",
                format=self.cfg.webhook_format.value,
                webhook=self.url is not None,
            )
            if self.url is None:
                log_event(log, "no webhook configured: alerts are logged only", logging.WARNING)
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=100)
                records = [(tp, r) for tp, rs in batch.items() for r in rs]
                for tp, record in records:
                    await self._handle(tp, record, producer)
                await self._send_digest_when_due(producer)
                if records:
                    await consumer.commit()  # everything consumed is delivered, suppressed or in the DLQ
        except _Interrupted:
            log_event(log, "stopped with deliveries pending; they come again on restart")
        finally:
            await consumer.stop()
            await producer.stop()
            self.ledger.close()

    async def _handle(self, tp: Any, record: Any, producer: Any) -> None:
        from shared.messages.codec import MessageError, decode
        from shared.messages.schemas import AlertEvent

        try:
            alert = decode(record.value, AlertEvent)
        except MessageError as exc:
            await self._dead_letter(producer, [(tp, record)], exc.reason, str(exc))
            return
        kind = metrics.kind_label(alert.kind)
        metrics.EVENTS_CONSUMED.labels(kind).inc()
        before = self.ledger.get(alert.alert_id)
        if before is not None and before.state == SENDING:  # died during its POST: again, same key
            await self._deliver([alert], [(tp, record)], producer, key=before.key)
            return
        admission = Admission.DUPLICATE if before is not None else self.forwarder.admit(alert, self.clock())
        if admission is Admission.DUPLICATE:
            metrics.SUPPRESSED.labels(kind).inc()
        elif admission is Admission.HELD:
            metrics.RATE_LIMITED.inc()
            self._held[alert.alert_id] = (tp, record)
        else:
            await self._deliver([alert], [(tp, record)], producer)

    async def _send_digest_when_due(self, producer: Any) -> None:
        wait = self.forwarder.digest_wait_s(self.clock())
        while wait is not None:
            # Hold consumption (and commits) until the digest is out: held alerts are never lost.
            if wait > 0:
                await self._sleep(wait)
            digest = self.forwarder.take_digest(self.clock())
            if digest:
                records = [self._held.pop(a.alert_id) for a in digest]
                await self._deliver(digest, records, producer)
            wait = self.forwarder.digest_wait_s(self.clock())

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        if self._stop.is_set():
            raise _Interrupted

    async def _deliver(
        self, alerts: list[Any], records: list[tuple[Any, Any]], producer: Any, key: str | None = None
    ) -> None:
        """Deliver ``alerts`` (one, or a digest) once: ``sending`` in the ledger before the POST,
        ``delivered`` or ``dead_lettered`` after. ``key``: the idempotency key of an earlier try."""
        ids = ",".join(a.alert_id for a in alerts)
        key = key or hashlib.sha256(ids.encode()).hexdigest()[:32]
        if self.url is None:
            for alert in alerts:
                log_event(log, "alert", logging.WARNING, **log_fields(alert))
            metrics.DELIVERIES.labels("logged").inc()
            self.ledger.record(alerts, DELIVERED, key)
            return
        body = payload(alerts, self.cfg.webhook_format)
        headers = {"Idempotency-Key": key}
        self.ledger.record(alerts, SENDING, key)
        started = self.clock()
        attempt = 0
        while True:
            attempt += 1
            result = await asyncio.to_thread(
                self.poster, self.url, body, self.cfg.timeout_s, headers, self.tls
            )
            if result.ok:
                self.ledger.record(alerts, DELIVERED, key)
                metrics.DELIVERIES.labels("delivered").inc()
                metrics.RETRYING.set(0)
                now_ns = time.time_ns()
                for alert in alerts:
                    metrics.DELIVERY_SECONDS.observe(max(now_ns - alert.raised_at, 0) / 1e9)
                log_event(log, "alert delivered", alerts=len(alerts), attempts=attempt, status=result.status)
                return
            if not result.retryable:
                metrics.DELIVERIES.labels("rejected").inc()
                metrics.RETRYING.set(0)
                await self._dead_letter(producer, records, "webhook_rejected", result.detail)
                self.ledger.record(alerts, DEAD_LETTERED, key)
                return
            delay = self.retry.delay(attempt, result.retry_after_s)
            if self.clock() - started + delay > self.retry.give_up_after_s:
                metrics.DELIVERIES.labels("gave_up").inc()
                metrics.RETRYING.set(0)
                await self._dead_letter(
                    producer, records, "webhook_unreachable", f"{result.detail} after {attempt} attempts"
                )
                self.ledger.record(alerts, DEAD_LETTERED, key)
                return
            metrics.DELIVERIES.labels("retry").inc()
            metrics.RETRYING.set(1)
            log_event(
                log,
                "webhook delivery failed, retrying",
                logging.WARNING,
                detail=result.detail,
                attempt=attempt,
                retry_in_s=round(delay, 2),
            )
            await self._sleep(delay)

    async def _dead_letter(
        self, producer: Any, records: list[tuple[Any, Any]], reason: str, detail: str
    ) -> None:
        """Durable give-up: each original record to the DLQ, acknowledged before we move on."""
        from shared.messages.codec import encode
        from shared.messages.schemas import DeadLetter

        for _partition, record in records:
            letter = DeadLetter.for_record(record, reason=reason, detail=detail, service=SERVICE)
            await producer.send_and_wait(self.settings.topic("dlq"), encode(letter), key=record.key)
            metrics.DEAD_LETTERS.labels(reason).inc()
        log_event(
            log, "alerts sent to the dlq", logging.ERROR, reason=reason, detail=detail, records=len(records)
        )
