"""The capture-device extension point (GenICam and other SDKs), with a real device implementation."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from services.camera_gateway import metrics
from services.camera_gateway.buffer import BufferSet
from services.camera_gateway.config import DeviceSource
from services.camera_gateway.core import CameraIdentity, RefuseLargeFrames, Sampler
from services.camera_gateway.sources.base import FrameSink
from services.camera_gateway.sources.device import DeviceReader, load_factory
from shared.errors import ConfigError
from shared.limits import MAX_IMAGE_BYTES
from shared.messages.codec import decode
from shared.messages.pixels import decode_pixels
from shared.messages.schemas import Frame
from shared.settings import OverflowPolicy
from tests.support import capture_devices

FACTORY = "tests.support.capture_devices:PatternDevice"


async def capture(camera: str, count: int, **config: object) -> list[Frame]:
    buffers = BufferSet()
    buffers.add_camera(camera, 64, 1 << 26, OverflowPolicy.BLOCK)
    metrics.prepare([camera])
    sink = FrameSink(CameraIdentity(camera, "s", "l"), buffers, MAX_IMAGE_BYTES, RefuseLargeFrames())
    device = DeviceSource(factory=FACTORY, **config)  # type: ignore[arg-type]
    reader = DeviceReader(device, sink, Sampler(device.fps), "run00003", 90)
    stop = asyncio.Event()
    task = asyncio.create_task(reader.run(stop))
    got = []
    deadline = time.monotonic() + 20
    while len(got) < count:
        assert time.monotonic() < deadline and not task.done()
        with contextlib.suppress(TimeoutError):
            got += await asyncio.wait_for(buffers.take(count - len(got)), 0.1)
    stop.set()
    await buffers.close()
    await asyncio.wait_for(task, 10)
    return [decode(item.value, Frame) for item in got]


async def test_a_device_s_pictures_become_frames() -> None:
    frames = await capture(
        "dev-rgb", 5, options={"name": "dev-rgb", "width": 40, "height": 30}, encoding="png"
    )
    assert [f.attributes["device_frame"] for f in frames] == ["1", "2", "3", "4", "5"]
    assert all(f.attributes["source"] == "device" and f.encoding == "png" for f in frames)
    assert decode_pixels(frames[0].image, "png", 40, 30).shape == (30, 40, 3)


async def test_mono_and_pre_encoded_pictures() -> None:
    mono = await capture("dev-mono", 2, options={"name": "dev-mono", "mono": True}, encoding="raw8")
    assert mono[0].encoding == "raw8" and len(mono[0].image) == 64 * 48
    jpeg = await capture("dev-jpeg", 2, options={"name": "dev-jpeg", "encoded": True})
    assert jpeg[0].encoding == "jpeg" and (jpeg[0].width, jpeg[0].height) == (64, 48)


async def test_a_failing_device_is_closed_and_opened_again() -> None:
    capture_devices.OPENED.clear()
    frames = await capture("dev-fail", 6, options={"name": "dev-fail", "fail_every": 3})
    assert len(frames) == 6
    assert capture_devices.OPENED.count("dev-fail") >= 3  # two failures: opened three times
    errors = metrics.REGISTRY.get_sample_value(
        "lineguard_camera_gateway_source_errors_total", {"camera_id": "dev-fail"}
    )
    assert errors is not None and errors >= 2


async def test_a_rate_limits_a_fast_device() -> None:
    started = time.monotonic()
    frames = await capture("dev-rate", 3, options={"name": "dev-rate", "rate": 100.0}, fps=5.0)
    assert time.monotonic() - started >= 0.35  # 3 frames at 5 per second: 0.4 s
    assert len(frames) == 3


def test_factories_that_cannot_be_used_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="cannot import"):
        load_factory("no_such_package.cameras:Device")
    with pytest.raises(ConfigError, match="no callable"):
        load_factory("tests.support.capture_devices:Nothing")
    assert load_factory(FACTORY) is capture_devices.PatternDevice


async def test_a_factory_that_makes_no_device_stops_the_camera_with_a_config_error() -> None:
    buffers = BufferSet()
    buffers.add_camera("dev-bad", 4, 1 << 20, OverflowPolicy.BLOCK)
    sink = FrameSink(CameraIdentity("dev-bad", "s", "l"), buffers, MAX_IMAGE_BYTES, RefuseLargeFrames())
    reader = DeviceReader(
        DeviceSource(factory="tests.support.capture_devices:not_a_device"), sink, Sampler(), "r", 90
    )
    with pytest.raises(ConfigError, match="lacks open/grab/close"):
        await asyncio.wait_for(reader.run(asyncio.Event()), 10)
