"""The per-camera buffers: bounded in frames and bytes, drop-oldest counted, block waits, fair."""

from __future__ import annotations

import asyncio

import pytest

from services.camera_gateway import metrics
from services.camera_gateway.buffer import BufferClosed, BufferSet
from services.camera_gateway.core import Outgoing
from shared.settings import OverflowPolicy


def item(camera: str, n: int, size: int = 10) -> Outgoing:
    return Outgoing(camera, f"{camera}-{n}", b"x" * size, [])


def dropped(camera: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "lineguard_camera_gateway_frames_dropped_total", {"camera_id": camera, "reason": "buffer_full"}
    )
    return value or 0.0


async def test_drop_oldest_keeps_the_newest_frames_and_counts_every_drop() -> None:
    seen: list[str] = []
    buffers = BufferSet(on_drop=lambda it, reason: seen.append(it.frame_id))
    buffers.add_camera("drop-a", max_frames=3, max_bytes=1 << 20, policy=OverflowPolicy.DROP_OLDEST)
    before = dropped("drop-a")
    for n in range(10):
        await buffers.put(item("drop-a", n))
        assert buffers.pending("drop-a") <= 3
    assert dropped("drop-a") - before == 7
    assert seen == [f"drop-a-{n}" for n in range(7)]
    assert [i.frame_id for i in await buffers.take(10)] == ["drop-a-7", "drop-a-8", "drop-a-9"]
    gauge = metrics.REGISTRY.get_sample_value(
        "lineguard_camera_gateway_buffer_frames", {"camera_id": "drop-a"}
    )
    assert gauge == 0


async def test_the_byte_bound_holds_but_one_frame_is_always_admitted() -> None:
    buffers = BufferSet()
    buffers.add_camera("bytes-a", max_frames=100, max_bytes=25, policy=OverflowPolicy.DROP_OLDEST)
    await buffers.put(item("bytes-a", 0, size=10))
    await buffers.put(item("bytes-a", 1, size=10))
    await buffers.put(item("bytes-a", 2, size=10))  # 30 > 25: the oldest goes
    assert [i.frame_id for i in await buffers.take(10)] == ["bytes-a-1", "bytes-a-2"]
    await buffers.put(item("bytes-a", 3, size=1000))  # alone it is over the bound, but admitted
    assert buffers.pending("bytes-a") == 1


async def test_block_waits_for_room_and_loses_nothing() -> None:
    buffers = BufferSet()
    buffers.add_camera("block-a", max_frames=2, max_bytes=1 << 20, policy=OverflowPolicy.BLOCK)
    before = dropped("block-a")

    async def produce() -> None:
        for n in range(6):
            await buffers.put(item("block-a", n))

    producer = asyncio.create_task(produce())
    await asyncio.sleep(0.05)
    assert not producer.done() and buffers.pending("block-a") == 2  # waiting for room
    got: list[str] = []
    while len(got) < 6:
        got += [i.frame_id for i in await buffers.take(1)]
    await producer
    assert got == [f"block-a-{n}" for n in range(6)]
    assert dropped("block-a") == before
    blocked = metrics.REGISTRY.get_sample_value(
        "lineguard_camera_gateway_blocked_seconds_total", {"camera_id": "block-a"}
    )
    assert blocked is not None and blocked > 0


async def test_cameras_take_turns() -> None:
    buffers = BufferSet()
    for camera in ("rr-a", "rr-b"):
        buffers.add_camera(camera, max_frames=10, max_bytes=1 << 20, policy=OverflowPolicy.BLOCK)
    for n in range(5):
        await buffers.put(item("rr-a", n))
    await buffers.put(item("rr-b", 0))
    batch = [i.frame_id for i in await buffers.take(3)]
    assert "rr-b-0" in batch and len(batch) == 3


async def test_closing_wakes_a_blocked_source_and_leaves_the_rest_to_take() -> None:
    buffers = BufferSet()
    buffers.add_camera("close-a", max_frames=1, max_bytes=1 << 20, policy=OverflowPolicy.BLOCK)
    await buffers.put(item("close-a", 0))
    blocked = asyncio.create_task(buffers.put(item("close-a", 1)))
    await asyncio.sleep(0.05)
    await buffers.close()
    with pytest.raises(BufferClosed):
        await blocked
    assert [i.frame_id for i in await buffers.take(5)] == ["close-a-0"]
    assert await buffers.take(5) == []  # closed and empty: the publisher stops


async def test_take_waits_for_a_frame() -> None:
    buffers = BufferSet()
    buffers.add_camera("wait-a", max_frames=1, max_bytes=1 << 20, policy=OverflowPolicy.BLOCK)
    taking = asyncio.create_task(buffers.take(5))
    await asyncio.sleep(0.05)
    assert not taking.done()
    await buffers.put(item("wait-a", 0))
    assert [i.frame_id for i in await asyncio.wait_for(taking, 1)] == ["wait-a-0"]
