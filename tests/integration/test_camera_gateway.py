"""The camera gateway on the real broker with a real scorer: a hot folder, a live HTTP stream from
FFmpeg and a live RTSP stream from GStreamer's server go in, verdicts come out."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from services.camera_gateway import metrics
from shared.kafka.client import make_producer
from shared.settings import Settings
from tests.support.gateway import cameras, gateway_line, gateway_settings, product_image
from tests.support.images import write_atomically
from tests.support.line import IMAGE_SIZE, LineModels, scorer_settings
from tests.support.media import http_stream, rtsp_stream
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_every_file_of_a_hot_folder_gets_exactly_one_verdict(
    kafka_settings: Settings, line_models: LineModels, tmp_path: Path
) -> None:
    settings = gateway_settings(scorer_settings(kafka_settings))
    hot = tmp_path / "hot"
    hot.mkdir()
    names = [f"part-{n:03d}.png" for n in range(6)] + [f"part-{n:03d}.jpg" for n in range(6, 10)]
    written: dict[str, bytes] = {}

    def write(name: str, seed: int) -> None:
        fmt = "PNG" if name.endswith(".png") else "JPEG"
        written[name] = product_image("washer", seed, IMAGE_SIZE, fmt)
        write_atomically(hot / name, written[name])

    for n, name in enumerate(names[:4]):  # waiting before the gateway starts
        write(name, n)
    config = cameras(
        {"camera_id": "hot-1", "station_id": "station-1", "product": "washer",
         "folder": {"path": str(hot), "settle_s": 0.3, "rescan_s": 1.0}}
    )  # fmt: skip
    async with gateway_line(settings, line_models.a, config) as (verdicts, frames):
        for n, name in enumerate(names[4:], start=4):  # arriving while it runs
            write(name, n)
            await asyncio.sleep(0.1)
        got = await verdicts.wait_for(len(names), timeout=90, settle=2.0)
        await wait_until(lambda: not list(hot.glob("part-*")), 15, "every file moved to done/")
    assert len(got.values) == len(names)
    sent = {f.attributes["file"]: f for f in frames.received.values}
    assert set(sent) == set(names)
    assert all(sent[name].image == written[name] for name in names)  # JPEG/PNG bytes unchanged
    assert Counter(v.frame_id for v in got.values) == Counter(f.frame_id for f in sent.values())
    assert {v.camera_id for v in got.values} == {"hot-1"} and {v.product_class for v in got.values} == {
        "washer"
    }
    assert sorted(p.name for p in (hot / "done").iterdir()) == sorted(names)
    sent_metric = metrics.REGISTRY.get_sample_value(
        "lineguard_camera_gateway_frames_sent_total", {"camera_id": "hot-1"}
    )
    assert sent_metric is not None and sent_metric >= len(names)


async def test_a_live_http_stream_from_ffmpeg_gets_verdicts(
    kafka_settings: Settings, line_models: LineModels
) -> None:
    settings = gateway_settings(scorer_settings(kafka_settings))
    with http_stream(seconds=30, rate=10, size=f"{IMAGE_SIZE}x{IMAGE_SIZE}") as url:
        config = cameras(
            {"camera_id": "http-1", "station_id": "station-2", "product": "fabric",
             "stream": {"url": url, "fps": 2.0, "options": {"probesize": "32768"}}}
        )  # fmt: skip
        async with gateway_line(settings, line_models.a, config) as (verdicts, _):
            got = await verdicts.wait_for(6, timeout=90, settle=0.0)
    first = got.values[:6]
    assert {v.camera_id for v in first} == {"http-1"} and {v.station_id for v in first} == {"station-2"}
    assert {v.product_class for v in first} == {"fabric"}
    assert len({v.frame_id for v in first}) == 6


async def test_a_live_rtsp_stream_gives_one_frame_per_trigger_record(
    kafka_settings: Settings, line_models: LineModels
) -> None:
    settings = gateway_settings(scorer_settings(kafka_settings))
    trigger_topic = settings.topic("alerts")  # any existing topic of the test serves as the plant's
    with rtsp_stream(rate=10, size=f"{IMAGE_SIZE}x{IMAGE_SIZE}") as url:
        config = cameras(
            {"camera_id": "rtsp-1", "station_id": "station-3", "product": "washer",
             "stream": {"url": url, "trigger": {"topic": trigger_topic}}},
            {"camera_id": "rtsp-2", "station_id": "station-4", "product": "washer",
             "stream": {"url": url, "trigger": {"topic": trigger_topic}}},
        )  # fmt: skip
        async with gateway_line(settings, line_models.a, config) as (verdicts, frames):
            up = {"camera_id": "rtsp-1"}
            await wait_until(
                lambda: metrics.REGISTRY.get_sample_value("lineguard_camera_gateway_source_up", up) == 1,
                60,
                "the RTSP stream open",
            )
            await asyncio.sleep(1.0)  # the trigger consumer sits at the end of its topic
            async with make_producer(settings) as producer:
                for part in ("part-1", "part-2", "part-3"):
                    await producer.send_and_wait(trigger_topic, part.encode(), key=b"rtsp-1")
                    await asyncio.sleep(0.4)
                await producer.send_and_wait(trigger_topic, b"both", key=None)  # no key: every camera
            got = await verdicts.wait_for(5, timeout=60, settle=2.0)
    by_camera = Counter(v.camera_id for v in got.values)
    assert by_camera == {"rtsp-1": 4, "rtsp-2": 1}
    triggers = sorted((f.camera_id, f.attributes["trigger"]) for f in frames.received.values)
    assert triggers == [("rtsp-1", "both"), ("rtsp-1", "part-1"), ("rtsp-1", "part-2"), ("rtsp-1", "part-3"),
                        ("rtsp-2", "both")]  # fmt: skip
    assert {f.width for f in frames.received.values} == {IMAGE_SIZE}
