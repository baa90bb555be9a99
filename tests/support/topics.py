"""Reading topics the way a downstream consumer does (and writing records in one batch), for tests
and benchmarks.

``read_records``/``read_messages`` read a topic from its beginning with ``read_committed`` (the
isolation every Lineguard consumer uses) until ``count`` records arrived or ``timeout_s`` passed,
and return what they got: callers assert on the count. ``TopicReader`` reads in the background for
a whole test, so a test can act and then wait for what its actions produce. Topic names are the
logical ones (``"verdicts"``); the settings' prefix is applied here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka import TopicPartition

from shared.kafka.client import make_consumer, make_producer
from shared.messages.codec import decode
from shared.settings import Settings

T = TypeVar("T")

POLL_MS = 200


async def produce_together(settings: Settings, name: str, values: Sequence[bytes], *, key: bytes) -> None:
    """``values`` in one record batch on partition 0 of topic ``name``, so a consumer gets them in
    one fetch (nothing, such as a commit or a broker hiccup, can fall between them)."""
    async with make_producer(settings) as producer:
        batch = producer.create_batch()
        for value in values:
            assert batch.append(key=key, value=value, timestamp=None) is not None
        batch.close()
        await (await producer.send_batch(batch, settings.topic(name), partition=0))


async def read_records(
    settings: Settings, name: str, count: int, *, timeout_s: float = 20.0, **consumer_options: Any
) -> list[Any]:
    """Up to ``count`` records of topic ``name`` from its beginning (aiokafka ConsumerRecords)."""
    topic = settings.topic(name)
    async with make_consumer(settings, topic, group_id=None, **consumer_options) as consumer:
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            for part in (await consumer.getmany(timeout_ms=POLL_MS)).values():
                records.extend(part)
        return records


async def read_messages(
    settings: Settings, name: str, message_type: type[T], count: int, *, timeout_s: float = 20.0
) -> list[T]:
    """Up to ``count`` decoded messages of topic ``name`` from its beginning."""
    records = await read_records(settings, name, count, timeout_s=timeout_s)
    return [decode(r.value, message_type) for r in records]


async def read_to_end(
    settings: Settings, name: str, isolation_level: str, *, expect_at_least: int = 0, timeout_s: float = 15.0
) -> list[bytes]:
    """Every value on topic ``name`` visible at ``isolation_level``.

    Reads until the consumer's position reaches the end offsets, which for read_committed are the
    last stable offsets: whatever is not read by then is not visible to such a consumer.
    """
    topic = settings.topic(name)
    async with make_consumer(settings, topic, group_id=None, isolation_level=isolation_level) as consumer:
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=POLL_MS)
            for records in batch.values():
                values.extend(r.value for r in records)
            assigned = list(consumer.assignment())
            if batch or not assigned or len(values) < expect_at_least:
                continue
            end = await consumer.end_offsets(assigned)
            if all([await consumer.position(tp) >= end[tp] for tp in assigned]):
                break
        return values


async def end_offset(settings: Settings, name: str, partition: int = 0) -> int:
    """The end offset of one partition of topic ``name`` (0: nothing was ever written there)."""
    tp = TopicPartition(settings.topic(name), partition)
    async with make_consumer(settings, group_id=None) as consumer:
        return int((await consumer.end_offsets([tp]))[tp])


async def committed_and_end(
    settings: Settings, group_id: str, name: str, partition: int = 0
) -> tuple[int | None, int]:
    """The offset ``group_id`` committed on one partition of topic ``name`` (None: nothing yet), and
    that partition's end offset."""
    tp = TopicPartition(settings.topic(name), partition)
    async with make_consumer(settings, group_id=group_id) as consumer:
        consumer.assign([tp])
        return await consumer.committed(tp), (await consumer.end_offsets([tp]))[tp]


@dataclass
class Received:
    """Messages read from one topic: decoded values with their headers, in read order, and when
    each arrived (``time.time_ns()`` as its fetch returned)."""

    items: list[tuple[Any, list[tuple[str, bytes]]]] = field(default_factory=list)
    arrived_ns: list[int] = field(default_factory=list)

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
                batches = await consumer.getmany(timeout_ms=POLL_MS)
                now = time.time_ns()
                for records in batches.values():
                    for r in records:
                        if (r.partition, r.offset) in self._seen:
                            continue
                        self._seen.add((r.partition, r.offset))
                        value = r.value if self.message_type is None else decode(r.value, self.message_type)
                        self.received.items.append((value, list(r.headers or ())))
                        self.received.arrived_ns.append(now)
        finally:
            await consumer.stop()

    def __len__(self) -> int:
        return len(self.received.items)

    def next_offsets(self) -> dict[int, int]:
        """Per partition, the offset after the last record read (what a consumer group that has
        handled everything read so far has committed; the end offset can be past it by a
        transaction's commit marker)."""
        offsets: dict[int, int] = {}
        for partition, offset in self._seen:
            offsets[partition] = max(offsets.get(partition, 0), offset + 1)
        return offsets

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


async def partition_leaders(settings: Settings, *names: str) -> dict[tuple[str, int], int]:
    """The node id leading each partition of the topics ``names`` (logical names), -1 where none does."""
    from shared.kafka.client import make_admin

    admin = make_admin(settings)
    await admin.start()
    try:
        described = await admin.describe_topics([settings.topic(name) for name in names])
    finally:
        await admin.close()
    logical = {settings.topic(name): name for name in names}
    return {
        (logical[t["topic"]], p["partition"]): int(p["leader"])
        for t in described
        if t["error_code"] == 0
        for p in t["partitions"]
    }
