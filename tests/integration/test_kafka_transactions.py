"""Exactly-once building blocks with aiokafka's transactions on the pinned broker.

The scorer consumes frames and, in one transaction, produces verdicts and commits the consumed
offsets. These tests pin down what that relies on: commit makes output and offsets visible
together, abort makes neither visible to read_committed consumers, and a second producer with the
same transactional id fences the first (a zombie cannot commit).
"""

from __future__ import annotations

import contextlib
import uuid

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import ProducerFenced

from shared.kafka.client import make_consumer, make_producer
from shared.settings import Settings
from tests.support.topics import committed_and_end, read_to_end

pytestmark = pytest.mark.integration


async def _produce_plain(settings: Settings, topic: str, values: list[bytes]) -> None:
    async with make_producer(settings) as producer:
        for value in values:
            await producer.send_and_wait(topic, value, partition=0)


async def test_consume_transform_produce_commits_output_and_offsets_together(
    kafka_settings: Settings,
) -> None:
    frames, verdicts = kafka_settings.topic("frames"), kafka_settings.topic("verdicts")
    group = f"scorer-{uuid.uuid4().hex[:6]}"
    await _produce_plain(kafka_settings, frames, [b"f0", b"f1", b"f2", b"f3"])
    tp = TopicPartition(frames, 0)

    consumer = make_consumer(kafka_settings, group_id=group)
    consumer.assign([tp])
    producer = make_producer(kafka_settings, transactional_id=f"txn-{uuid.uuid4().hex[:6]}")
    await consumer.start()
    await producer.start()
    try:
        # First batch committed, second batch aborted: only the first batch's output and offsets stick.
        records = (await consumer.getmany(tp, timeout_ms=10_000, max_records=2))[tp]
        assert [r.value for r in records] == [b"f0", b"f1"]
        async with producer.transaction():
            for r in records:
                await producer.send(verdicts, b"v-" + r.value, key=b"station-1")
            await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, group)

        records = (await consumer.getmany(tp, timeout_ms=10_000, max_records=2))[tp]
        assert [r.value for r in records] == [b"f2", b"f3"]
        await producer.begin_transaction()
        for r in records:
            await producer.send(verdicts, b"v-" + r.value, key=b"station-1")
        await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, group)
        await producer.abort_transaction()
    finally:
        await producer.stop()
        await consumer.stop()

    assert sorted(await read_to_end(kafka_settings, "verdicts", "read_committed")) == [b"v-f0", b"v-f1"]
    assert (await committed_and_end(kafka_settings, group, "frames"))[0] == 2
    # The aborted records are on the log: a read_uncommitted consumer sees them, so the check above
    # really measures isolation.
    assert sorted(await read_to_end(kafka_settings, "verdicts", "read_uncommitted", expect_at_least=4)) == [
        b"v-f0",
        b"v-f1",
        b"v-f2",
        b"v-f3",
    ]


async def test_open_transaction_is_invisible_until_committed(kafka_settings: Settings) -> None:
    verdicts = kafka_settings.topic("verdicts")
    producer = make_producer(kafka_settings, transactional_id=f"txn-{uuid.uuid4().hex[:6]}")
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(verdicts, b"pending", partition=0)
        assert await read_to_end(kafka_settings, "verdicts", "read_committed") == []
        await producer.commit_transaction()
    finally:
        await producer.stop()
    assert await read_to_end(kafka_settings, "verdicts", "read_committed", expect_at_least=1) == [b"pending"]


async def test_second_producer_with_same_id_fences_the_zombie(kafka_settings: Settings) -> None:
    verdicts = kafka_settings.topic("verdicts")
    transactional_id = f"scorer-frames-0-{uuid.uuid4().hex[:6]}"
    zombie = make_producer(kafka_settings, transactional_id=transactional_id)
    await zombie.start()
    successor = make_producer(kafka_settings, transactional_id=transactional_id)
    try:
        await zombie.begin_transaction()
        await zombie.send_and_wait(verdicts, b"zombie-1", partition=0)
        # The successor's init aborts the zombie's open transaction and bumps the epoch.
        await successor.start()
        with pytest.raises(ProducerFenced):
            await zombie.send_and_wait(verdicts, b"zombie-2", partition=0)
            await zombie.commit_transaction()
        async with successor.transaction():
            await successor.send(verdicts, b"successor", partition=0)
    finally:
        await successor.stop()
        with contextlib.suppress(ProducerFenced):
            await zombie.stop()
    assert await read_to_end(kafka_settings, "verdicts", "read_committed", expect_at_least=1) == [
        b"successor"
    ]
