"""Messages through the real broker: a Frame (up to 4 MiB) and its headers come back intact."""

from __future__ import annotations

import os
import time

import pytest

from shared.errors import MessageError
from shared.kafka.client import header, make_consumer, make_producer
from shared.messages import Frame, decode, encode
from shared.settings import Settings

pytestmark = pytest.mark.integration


def _frame(i: int, image: bytes, camera: str = "cam-1") -> Frame:
    return Frame(
        frame_id=f"f-{i}",
        line_id="line-1",
        station_id="station-1",
        camera_id=camera,
        captured_at=time.time_ns(),
        encoding="jpeg",
        image=image,
        product="washer",
        deadline_ms=500,
        attributes={"lot": "A17"},
    )


async def _consume(settings: Settings, topic: str, count: int, **kwargs):  # type: ignore[no-untyped-def]
    consumer = make_consumer(settings, topic, group_id=None, **kwargs)
    await consumer.start()
    try:
        records = []
        deadline = time.monotonic() + 20
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


async def test_frames_round_trip_with_key_and_headers(kafka_settings: Settings) -> None:
    topic = kafka_settings.topic("frames")
    big = os.urandom(4 << 20)  # a 4 MiB frame must fit
    frames = [_frame(0, big), _frame(1, b"\xff\xd8small", camera="cam-2")]
    traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    producer = make_producer(kafka_settings)
    await producer.start()
    try:
        for frame in frames:
            await producer.send_and_wait(
                topic, encode(frame), key=frame.camera_id.encode(), headers=[("traceparent", traceparent)]
            )
    finally:
        await producer.stop()

    records = await _consume(kafka_settings, topic, len(frames))
    got = sorted((decode(r.value, Frame) for r in records), key=lambda f: f.frame_id)
    assert got == frames
    assert {r.key for r in records} == {b"cam-1", b"cam-2"}
    assert all(header(r.headers, "traceparent") == traceparent for r in records)


async def test_same_camera_stays_on_one_partition_in_order(kafka_settings: Settings) -> None:
    topic = kafka_settings.topic("frames")
    producer = make_producer(kafka_settings)
    await producer.start()
    try:
        for i in range(20):
            await producer.send(
                topic, encode(_frame(i, b"x", camera=f"cam-{i % 2}")), key=f"cam-{i % 2}".encode()
            )
        await producer.flush()
    finally:
        await producer.stop()
    records = await _consume(kafka_settings, topic, 20)
    assert len(records) == 20
    by_camera: dict[bytes, set[int]] = {}
    order: dict[bytes, list[int]] = {}
    for r in records:
        by_camera.setdefault(r.key, set()).add(r.partition)
        order.setdefault(r.key, []).append(int(decode(r.value, Frame).frame_id[2:]))
    assert all(len(parts) == 1 for parts in by_camera.values())
    assert all(ids == sorted(ids) for ids in order.values())


async def test_a_bad_record_is_a_message_error_not_a_crash(kafka_settings: Settings) -> None:
    topic = kafka_settings.topic("frames")
    producer = make_producer(kafka_settings)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"\x93not a frame", key=b"cam-1")
    finally:
        await producer.stop()
    (record,) = await _consume(kafka_settings, topic, 1)
    with pytest.raises(MessageError) as info:
        decode(record.value, Frame)
    assert info.value.reason == "malformed"
