"""Frames from the buffers to Kafka, in transactions, each with its ledger records.

Exactly one frame per hot-folder file, also across a crash at any moment:

1. A transaction sends a batch of frames and, for each camera in it, a ``CameraLedger`` record
   naming the batch's files; both commit together or not at all.
2. After the commit the files are moved or deleted (and the folder synced) before the next
   transaction; the next record of that camera then no longer names them.
3. A gateway that starts, or a publisher whose transaction failed with an unknown outcome, first
   fences its previous producer (same transactional id: the broker aborts or finishes its open
   transaction) and reads the ledger. A file still in the folder but named in its camera's last
   record was committed: it is moved away, not sent. A failed batch whose ``committed_at`` is in
   the ledger was committed; otherwise it is sent again.

Readers of ``frames`` use read_committed (the scorer does), so a frame of an aborted transaction
is never scored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaError, ProducerFenced

from services.camera_gateway import metrics
from services.camera_gateway.buffer import BufferSet
from services.camera_gateway.core import Outgoing, committed_in, ledger_records
from services.camera_gateway.ledger import LEDGER_TOPIC, read_ledger
from shared.errors import BrokerError, LineguardError
from shared.kafka.client import make_producer
from shared.messages.codec import encode
from shared.messages.schemas import CameraLedger
from shared.settings import Settings
from shared.telemetry.logging import log_event

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

log = logging.getLogger("lineguard.camera_gateway.publisher")

# Failures that a new producer, later, can get past. BrokerError: the ledger could not be read in time.
_TRANSIENT = (KafkaError, OSError, TimeoutError, BrokerError)


class GatewayFenced(LineguardError):
    """Another gateway with this transactional id took over."""

    default_reason = "fenced"


# Called after the frames of a committed batch that came from files, before the next transaction:
# moves or deletes those files. An exception stops the gateway (the ledger makes the restart safe).
Dispose = Callable[[Sequence[Outgoing]], Awaitable[None]]
# Stages of a batch, for logs and for tests that kill the process at a precise moment:
# "sent" (in an open transaction), "committed" (files not yet moved), "disposed".
StageObserver = Callable[[str, Sequence[Outgoing]], None]


class Publisher:
    def __init__(
        self,
        settings: Settings,
        transactional_id: str,
        cameras: Sequence[str],
        buffers: BufferSet,
        dispose: Dispose,
        observer: StageObserver | None = None,
    ) -> None:
        self.settings = settings
        self.transactional_id = transactional_id
        self.cameras = list(cameras)
        self.buffers = buffers
        self._dispose = dispose
        self._observer = observer
        self._gateway = settings.camera_gateway
        self._frames_topic = settings.topic("frames")
        self._ledger_topic = settings.topic(LEDGER_TOPIC)
        self._producer: AIOKafkaProducer | None = None
        self._last_stamp = 0
        self.sent = 0

    async def start(self, stop: asyncio.Event) -> dict[str, CameraLedger] | None:
        """Fence the previous producer and read the ledger, retrying while Kafka is unreachable.

        Returns None if ``stop`` was set first.
        """
        delay = self._gateway.retry_initial_s
        while not stop.is_set():
            try:
                return await self._renew()
            except _TRANSIENT as exc:  # Kafka unreachable or not ready: keep trying until stopped
                log_event(log, "kafka_unavailable", logging.WARNING, error=_describe(exc), retry_in_s=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, self._gateway.retry_max_s)
        return None

    async def run(self, hard_stop: asyncio.Event) -> None:
        """Publish until the buffers are closed and empty, or ``hard_stop`` (the drain deadline)."""
        while not hard_stop.is_set():
            batch = await self.buffers.take(self._gateway.max_batch)
            if not batch:
                return
            await self._publish(batch, hard_stop)

    async def stop(self) -> None:
        await self._close_producer()

    # ---- one batch ---------------------------------------------------------------------------

    async def _publish(self, batch: list[Outgoing], hard_stop: asyncio.Event) -> None:
        delay = self._gateway.retry_initial_s
        while True:
            stamp = self._stamp()
            started = time.monotonic()
            try:
                await asyncio.wait_for(self._transaction(batch, stamp), self._gateway.send_timeout_s)
            except ProducerFenced:
                raise GatewayFenced(
                    f"another gateway started with transactional id {self.transactional_id} (the same "
                    "cameras) and took over; two gateways must not read the same cameras"
                ) from None
            except _TRANSIENT as exc:  # the outcome is unknown: the ledger settles it
                metrics.TRANSACTIONS.labels(outcome="failed").inc()
                metrics.KAFKA_UP.set(0)
                log_event(
                    log,
                    "transaction_failed",
                    logging.WARNING,
                    frames=len(batch),
                    error=_describe(exc),
                    retry_in_s=delay,
                )
                ledger = await self._recover(hard_stop, delay)
                if ledger is None:  # stopping: the batch stays unsent (its files stay in the folder)
                    left = [item for item in batch if item.file is None]
                    for item in left:
                        metrics.dropped(item.camera_id, "shutdown")
                    return
                delay = min(delay * 2, self._gateway.retry_max_s)
                if not committed_in(batch, ledger, stamp):
                    continue
                metrics.TRANSACTIONS.labels(outcome="recovered").inc()
                log_event(log, "transaction_found_committed", frames=len(batch))
            else:
                metrics.TRANSACTIONS.labels(outcome="committed").inc()
                metrics.TRANSACTION_SECONDS.observe(time.monotonic() - started)
            break
        metrics.KAFKA_UP.set(1)
        metrics.BATCH_FRAMES.observe(len(batch))
        for item in batch:
            metrics.FRAMES_SENT.labels(camera_id=item.camera_id).inc()
        self.sent += len(batch)
        self._stage("committed", batch)
        files = [item for item in batch if item.file is not None]
        if files:
            await self._dispose(files)
        self._stage("disposed", batch)

    async def _transaction(self, batch: Sequence[Outgoing], stamp: int) -> None:
        producer = self._producer
        if producer is None:
            raise ConnectionError("no producer (Kafka was unreachable)")
        await producer.begin_transaction()
        deliveries = [
            await producer.send(
                self._frames_topic, value=item.value, key=item.camera_id.encode(), headers=item.headers
            )
            for item in batch
        ]
        for record in ledger_records(batch, stamp):
            deliveries.append(
                await producer.send(self._ledger_topic, value=encode(record), key=record.camera_id.encode())
            )
        self._stage("sent", batch)
        await producer.commit_transaction()
        for delivery in deliveries:
            await delivery  # raises if a record was refused

    def _stamp(self) -> int:
        """A transaction's ``committed_at``: wall clock ns, strictly increasing within this run."""
        self._last_stamp = max(time.time_ns(), self._last_stamp + 1)
        return self._last_stamp

    def _stage(self, stage: str, batch: Sequence[Outgoing]) -> None:
        if self._observer is not None:
            self._observer(stage, batch)

    # ---- producer life -----------------------------------------------------------------------

    async def _recover(self, hard_stop: asyncio.Event, delay: float) -> dict[str, CameraLedger] | None:
        """A new producer and the ledger as committed; None if ``hard_stop`` came first."""
        while not hard_stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hard_stop.wait(), delay)
            if hard_stop.is_set():
                break
            try:
                return await self._renew()
            except _TRANSIENT as exc:  # still unreachable: wait longer
                delay = min(delay * 2, self._gateway.retry_max_s)
                log_event(log, "kafka_unavailable", logging.WARNING, error=_describe(exc), retry_in_s=delay)
        return None

    async def _renew(self) -> dict[str, CameraLedger]:
        """Replace the producer: the new one fences the old and ends its open transaction."""
        await self._close_producer()
        gateway = self._gateway
        producer = make_producer(
            self.settings,
            transactional_id=self.transactional_id,
            transaction_timeout_ms=gateway.transaction_timeout_ms,
            request_timeout_ms=int(gateway.send_timeout_s * 1000),
            linger_ms=0,
            retry_backoff_ms=50,
        )
        self._producer = producer
        timeout = gateway.ledger_timeout_s
        await asyncio.wait_for(producer.start(), timeout)
        # The producer id is handed out only once the previous holder's open transaction is ended
        # (aborted or completed); an empty transaction waits for it.
        await asyncio.wait_for(producer.begin_transaction(), timeout)
        await asyncio.wait_for(producer.commit_transaction(), timeout)
        ledger = await read_ledger(self.settings, self.cameras, timeout)
        metrics.KAFKA_UP.set(1)
        log_event(log, "producer_ready", transactional_id=self.transactional_id, ledger_cameras=len(ledger))
        return ledger

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            # A producer cut off from Kafka may never finish stopping; it is abandoned after a while
            # (its open transaction, if any, is ended by the next producer's fencing).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5.0)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
