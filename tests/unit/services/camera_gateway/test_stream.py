"""Video through PyAV (FFmpeg in the wheel), without Kafka: files and a live HTTP stream on
localhost, sampled by rate and by trigger, in every encoding."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.camera_gateway import metrics
from services.camera_gateway.buffer import BufferSet
from services.camera_gateway.config import StreamSource
from services.camera_gateway.core import CameraIdentity, Outgoing, RefuseLargeFrames, Sampler
from services.camera_gateway.sources.base import FrameSink
from services.camera_gateway.sources.stream import StreamReader, _safe_url
from services.camera_gateway.sources.triggers import fire
from shared.limits import MAX_IMAGE_BYTES
from shared.messages.codec import decode
from shared.messages.pixels import decode_pixels
from shared.messages.schemas import Frame
from shared.settings import OverflowPolicy
from tests.support.media import http_stream, make_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=3.0, rate=10)


@dataclass
class Reading:
    reader: StreamReader
    buffers: BufferSet
    task: asyncio.Task[None]
    got: list[Outgoing]

    async def frames(self, count: int | None = None, timeout: float = 20.0) -> list[Frame]:
        """``count`` frames, or (None) every frame until the reader finishes."""
        deadline = time.monotonic() + timeout
        while (count is None and not self.task.done()) or (count is not None and len(self.got) < count):
            assert time.monotonic() < deadline, f"{len(self.got)} frames after {timeout}s"
            with contextlib.suppress(TimeoutError):
                self.got += await asyncio.wait_for(self.buffers.take(64), 0.1)
        self.got += await self.buffers.take(64) if len(self.buffers) else []
        return [decode(item.value, Frame) for item in self.got]


@contextlib.asynccontextmanager
async def reading(
    camera: str,
    sampler: Sampler | None = None,
    overflow: OverflowPolicy = OverflowPolicy.BLOCK,
    **config: Any,
) -> AsyncIterator[Reading]:
    buffers = BufferSet()
    buffers.add_camera(camera, 64, 1 << 28, overflow)
    metrics.prepare([camera])
    sink = FrameSink(
        CameraIdentity(camera, "station-1", "line-1"), buffers, MAX_IMAGE_BYTES, RefuseLargeFrames()
    )
    stream = StreamSource(**config)
    reader = StreamReader(stream, sink, sampler or Sampler(stream.fps or 1.0), "run00001", 85)
    stop = asyncio.Event()
    task = asyncio.create_task(reader.run(stop))
    try:
        yield Reading(reader, buffers, task, [])
    finally:
        stop.set()
        await buffers.close()
        await asyncio.wait_for(task, 15)


async def test_a_video_file_is_sampled_by_its_own_clock_at_the_configured_rate(clip: Path) -> None:
    async with reading("vid-rate", url=str(clip), fps=2.0, realtime=False) as run:
        frames = await run.frames()
    assert len(frames) == 6  # 3 s at 2 frames per second of video time
    assert len({f.frame_id for f in frames}) == 6
    assert all(f.frame_id.startswith("vid-rate-run00001-") for f in frames)
    first = frames[0]
    assert (first.encoding, first.width, first.height) == ("jpeg", 320, 240)
    assert first.attributes == {"source": "stream"}
    assert decode_pixels(first.image, "jpeg", 320, 240).shape == (240, 320, 3)


@pytest.mark.parametrize(("encoding", "channels"), [("raw-rgb", 3), ("raw8", 1), ("png", None)])
async def test_decoded_frames_go_out_in_the_configured_encoding(
    clip: Path, encoding: str, channels: int | None
) -> None:
    async with reading(f"vid-{encoding}", url=str(clip), fps=1.0, realtime=False, encoding=encoding) as run:
        frames = await run.frames()
    assert len(frames) == 3 and {f.encoding for f in frames} == {encoding}
    if channels is not None:
        assert len(frames[0].image) == 320 * 240 * channels
    assert decode_pixels(frames[0].image, encoding, 320, 240).shape == (240, 320, 3)


async def test_a_video_file_plays_at_its_own_pace_and_can_loop(clip: Path) -> None:
    started = time.monotonic()
    async with reading("vid-loop", url=f"file://{clip}", fps=5.0, loop=True) as run:
        frames = await run.frames(20, timeout=30)  # more than one pass holds (3 s x 5 = 15)
    assert time.monotonic() - started >= 3.5  # real time: 20 frames at 5 per second take ~4 s
    assert len({f.frame_id for f in frames}) == len(frames)


async def test_a_trigger_takes_one_frame_each(clip: Path) -> None:
    sampler = Sampler(triggered=True)
    async with reading("vid-trigger", sampler, url=str(clip), loop=True, trigger={"file": "/unused"}) as run:
        await asyncio.sleep(0.5)
        assert run.got == [] and len(run.buffers) == 0  # decoding, but nothing asked for a frame
        for part in ("part-1", "part-2", "part-3"):
            fire("vid-trigger", sampler, part)
            await asyncio.sleep(0.3)
        frames = await run.frames(3)
        await asyncio.sleep(0.5)
        assert len(run.buffers) == 0
    assert [f.attributes.get("trigger") for f in frames] == ["part-1", "part-2", "part-3"]


async def test_a_live_http_stream_is_read_as_it_comes(tmp_path: Path) -> None:
    with http_stream(seconds=20, rate=10) as url:
        async with reading("live-http", url=url, fps=4.0, options={"probesize": "32768"}) as run:
            frames = await run.frames(6, timeout=30)
            up = metrics.REGISTRY.get_sample_value(
                "lineguard_camera_gateway_source_up", {"camera_id": "live-http"}
            )
    assert up == 1
    times = [f.captured_at for f in frames]
    assert times == sorted(times)
    assert 0.15 <= (times[-1] - times[0]) / 1e9 / 5 <= 0.4  # about 4 per second, in real time


async def test_drop_oldest_keeps_a_live_stream_current_when_nobody_takes_frames(clip: Path) -> None:
    buffers = BufferSet()
    buffers.add_camera("vid-drop", 3, 1 << 28, OverflowPolicy.DROP_OLDEST)
    metrics.prepare(["vid-drop"])
    sink = FrameSink(CameraIdentity("vid-drop", "s", "l"), buffers, MAX_IMAGE_BYTES, RefuseLargeFrames())
    reader = StreamReader(StreamSource(url=str(clip), realtime=False), sink, Sampler(), "run00002", 85)
    await reader.run(asyncio.Event())  # every one of the 30 frames, into a buffer of 3
    kept = [decode(i.value, Frame).frame_id for i in await buffers.take(10)]
    assert kept == [f"vid-drop-run00002-{n:09d}" for n in (27, 28, 29)]
    dropped = metrics.REGISTRY.get_sample_value(
        "lineguard_camera_gateway_frames_dropped_total", {"camera_id": "vid-drop", "reason": "buffer_full"}
    )
    assert dropped == 27


async def test_an_unreachable_stream_is_retried_and_counted_and_stops_promptly() -> None:
    async with reading("dead-http", url="http://127.0.0.1:9/nothing.ts", fps=1.0, open_timeout_s=1.0) as run:
        await asyncio.sleep(2.0)
        errors = metrics.REGISTRY.get_sample_value(
            "lineguard_camera_gateway_source_errors_total", {"camera_id": "dead-http"}
        )
        assert errors is not None and errors >= 2
        assert not run.task.done()
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 5


def test_credentials_never_reach_the_logs() -> None:
    assert _safe_url("rtsp://admin:secret@10.0.0.5:554/stream1") == "rtsp://10.0.0.5:554/stream1"
    assert _safe_url("/videos/clip.mp4") == "/videos/clip.mp4"
