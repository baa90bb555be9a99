"""Messages through the real broker: a Frame (up to 4 MiB) and its headers come back intact."""

from __future__ import annotations

import os

import pytest

from shared.errors import MessageError
from shared.kafka.client import header, make_producer
from shared.messages import Frame, decode, encode
from shared.settings import Settings
from tests.support.messages import frame
from tests.support.topics import read_records

pytestmark = pytest.mark.integration


def _frame(i: int, image: bytes, camera: str = "cam-1") -> Frame:
    return frame(
        f"f-{i}",
        camera_id=camera,
        station_id="station-1",
        image=image,
        product="washer",
        deadline_ms=500,
        attributes={"lot": "A17"},
    )


async def test_frames_round_trip_with_key_and_headers(kafka_settings: Settings) -> None:
    topic = kafka_settings.topic("frames")
    big = os.urandom(4 << 20)  # a 4 MiB frame must fit
    frames = [_frame(0, big), _frame(1, b"\xff\xd8small", camera="cam-2")]
    traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with make_producer(kafka_settings) as producer:
        for sent in frames:
            await producer.send_and_wait(
                topic, encode(sent), key=sent.camera_id.encode(), headers=[("traceparent", traceparent)]
            )

    records = await read_records(kafka_settings, "frames", len(frames))
    got = sorted((decode(r.value, Frame) for r in records), key=lambda f: f.frame_id)
    assert got == frames
    assert {r.key for r in records} == {b"cam-1", b"cam-2"}
    assert all(header(r.headers, "traceparent") == traceparent for r in records)


async def test_same_camera_stays_on_one_partition_in_order(kafka_settings: Settings) -> None:
    topic = kafka_settings.topic("frames")
    async with make_producer(kafka_settings) as producer:
        for i in range(20):
            await producer.send(
                topic, encode(_frame(i, b"x", camera=f"cam-{i % 2}")), key=f"cam-{i % 2}".encode()
            )
        await producer.flush()
    records = await read_records(kafka_settings, "frames", 20)
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
    async with make_producer(kafka_settings) as producer:
        await producer.send_and_wait(topic, b"\x93not a frame", key=b"cam-1")
    (record,) = await read_records(kafka_settings, "frames", 1)
    with pytest.raises(MessageError) as info:
        decode(record.value, Frame)
    assert info.value.reason == "malformed"
