"""Reading the ``camera-ledger`` topic: the last record of each camera, as committed.

Each gateway transaction carries, for every camera in it, a ``CameraLedger`` record naming the
hot-folder files whose frames it commits. A file named in a camera's last record and still in the
folder was sent already; a transaction whose records are the last ones was committed.

Read with ``read_committed`` up to the high watermark taken before reading: every record this
gateway ever wrote is below it, and read_committed cannot pass another producer's open
transaction, so reading waits (at most ``timeout_s``) until those end. The caller has fenced its
own previous producer first, so none of its transactions is still open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection

from shared.errors import BrokerError, ConfigError, MessageError
from shared.kafka.client import make_consumer
from shared.messages.codec import decode
from shared.messages.schemas import CameraLedger
from shared.settings import Settings
from shared.telemetry.logging import log_event, record_position

log = logging.getLogger("lineguard.camera_gateway.ledger")

LEDGER_TOPIC = "camera-ledger"


async def read_ledger(
    settings: Settings, cameras: Collection[str], timeout_s: float
) -> dict[str, CameraLedger]:
    """The last committed ledger record of each of ``cameras`` (cameras without one are absent)."""
    from aiokafka import TopicPartition

    topic = settings.topic(LEDGER_TOPIC)
    partition = TopicPartition(topic, 0)
    deadline = time.monotonic() + timeout_s
    probe = make_consumer(settings, group_id=None, isolation_level="read_uncommitted")
    await probe.start()
    try:
        if topic not in await probe.topics():
            raise ConfigError(f"topic {topic} does not exist: run `lineguard topics ensure`")
        high_watermark = (await probe.end_offsets([partition]))[partition]
    finally:
        await probe.stop()

    ledger: dict[str, CameraLedger] = {}
    consumer = make_consumer(settings, group_id=None)  # read_committed
    await consumer.start()
    try:
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        while await consumer.position(partition) < high_watermark:
            if time.monotonic() > deadline:
                position = await consumer.position(partition)
                raise BrokerError(
                    f"the camera ledger could not be read to offset {high_watermark} within {timeout_s}s "
                    f"(at {position}): is another producer's transaction open on {topic}?"
                )
            batches = await consumer.getmany(partition, timeout_ms=500)
            for record in batches.get(partition, []):
                key = (record.key or b"").decode("utf-8", "replace")
                if key not in cameras:
                    continue
                if record.value is None:  # a tombstone: the camera's entry is gone
                    ledger.pop(key, None)
                    continue
                try:
                    entry = decode(record.value, CameraLedger)
                except MessageError as exc:
                    # Only that camera's protection against a resend is lost; say so loudly.
                    log_event(
                        log,
                        "ledger_record_unreadable",
                        logging.ERROR,
                        **record_position(record),
                        reason=exc.reason,
                    )
                    continue
                ledger[key] = entry
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    log_event(log, "ledger_read", cameras=len(ledger), high_watermark=high_watermark)
    return ledger
