"""Exactly one frame per hot-folder file when the gateway is SIGKILLed at its worst moments, and when
Kafka stops answering mid-transaction; bounded buffers and counted drops meanwhile."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from services.camera_gateway import metrics
from shared.kafka.broker import LocalBroker
from shared.messages.schemas import Frame, Verdict
from shared.settings import Settings
from tests.support.gateway import (
    GatewayProcess,
    cameras,
    gateway_settings,
    product_image,
    running_gateway,
    write_config,
)
from tests.support.images import write_atomically
from tests.support.line import IMAGE_SIZE, LineModels, running_scorer, scorer_settings
from tests.support.media import make_clip
from tests.support.topics import TopicReader
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FILES = 12


def sample(name: str, labels: dict[str, str]) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_sigkill_while_sending_after_commit_and_after_moving_files_still_sends_each_file_once(
    kafka_settings: Settings, line_models: LineModels, tmp_path: Path
) -> None:
    settings = gateway_settings(scorer_settings(kafka_settings), max_batch=2)
    hot = tmp_path / "hot"
    hot.mkdir()
    for n in range(FILES):
        write_atomically(hot / f"part-{n:02d}.png", product_image("washer", n, IMAGE_SIZE))
    config_file = write_config(
        tmp_path / "cameras.yaml",
        cameras({"camera_id": "crash-1", "station_id": "station-1", "product": "washer",
                 "folder": {"path": str(hot), "settle_s": 0.2, "rescan_s": 1.0}}),
    )  # fmt: skip
    left = lambda: sorted(p.name for p in hot.glob("part-*"))  # noqa: E731
    async with (
        TopicReader(settings, "frames", Frame) as frames,
        TopicReader(settings, "verdicts", Verdict) as verdicts,
        running_scorer(settings, line_models.a),
    ):
        # 1. Killed with its second transaction open: that batch must never be scored.
        first = GatewayProcess(settings, config_file, tmp_path / "1.log", kill_at=("sent", 2))
        assert await first.wait_exit(120) == -signal.SIGKILL, first.log_text()[-3000:]
        open_batch = first.killed_batch()
        assert open_batch and set(open_batch) <= set(left())
        # 2. Killed after its second commit, before moving that batch's files away.
        second = GatewayProcess(settings, config_file, tmp_path / "2.log", kill_at=("committed", 2))
        assert await second.wait_exit(120) == -signal.SIGKILL, second.log_text()[-3000:]
        committed_batch = second.killed_batch()
        assert committed_batch and set(committed_batch) <= set(left())
        # 3. Finds that batch in the ledger and moves its files away unsent; killed after its first move.
        third = GatewayProcess(settings, config_file, tmp_path / "3.log", kill_at=("disposed", 1))
        assert await third.wait_exit(120) == -signal.SIGKILL, third.log_text()[-3000:]
        log = third.log_text()
        assert log.count('"event": "file_already_sent"') == len(committed_batch)
        assert all(f'"file": "{name}"' in log for name in committed_batch)
        assert not set(committed_batch + third.killed_batch()) & set(left())
        # 4. A plain `lineguard camera-gateway` finishes the folder and stops cleanly on SIGTERM.
        fourth = GatewayProcess(settings, config_file, tmp_path / "4.log")
        await wait_until(lambda: not left(), 120, "every file sent and moved")
        assert await fourth.terminate() == 0, fourth.log_text()[-3000:]
        got = await verdicts.wait_for(FILES, timeout=120, settle=3.0)
    sent = Counter(f.attributes["file"] for f in frames.received.values)
    assert sent == Counter(f"part-{n:02d}.png" for n in range(FILES)), sent  # read_committed: once each
    assert Counter(v.frame_id for v in got.values) == Counter(f.frame_id for f in frames.received.values)
    assert len(got.values) == FILES
    assert sorted(p.name for p in (hot / "done").iterdir()) == [f"part-{n:02d}.png" for n in range(FILES)]


@pytest.fixture
def broker_pid(local_broker: LocalBroker | None) -> int:
    if local_broker is None:
        pytest.skip("pauses the harness's own broker; LINEGUARD_KAFKA_BOOTSTRAP names another one")
    pid = local_broker.status().pid
    assert pid is not None
    return pid


async def test_kafka_frozen_mid_stream_drops_only_live_frames_counted_and_loses_no_file(
    kafka_settings: Settings, broker_pid: int, tmp_path: Path
) -> None:
    settings = gateway_settings(
        kafka_settings, buffer_frames=4, overflow="drop_oldest", send_timeout_s=2.0, ledger_timeout_s=60.0
    )
    hot = tmp_path / "hot"
    hot.mkdir()
    clip = make_clip(tmp_path / "clip.mp4", seconds=2.0, rate=10, size="64x48")
    config = cameras(
        {"camera_id": "pause-hot", "station_id": "s1",
         "folder": {"path": str(hot), "settle_s": 0.2, "rescan_s": 1.0}},
        {"camera_id": "pause-live", "station_id": "s2",
         "stream": {"url": str(clip), "fps": 10.0, "loop": True}},
    )  # fmt: skip
    files = [f"f-{n:02d}.png" for n in range(10)]
    dropped = {"camera_id": "pause-live", "reason": "buffer_full"}
    async with TopicReader(settings, "frames", Frame) as frames, running_gateway(settings, config) as gateway:
        for name in files[:3]:
            write_atomically(hot / name, product_image("fabric", len(name), 32))
        await wait_until(lambda: not list(hot.glob("f-*")), 60, "the first files sent")
        failed_before = sample("lineguard_camera_gateway_transactions_total", {"outcome": "failed"})
        dropped_before = sample("lineguard_camera_gateway_frames_dropped_total", dropped)
        os.kill(broker_pid, signal.SIGSTOP)  # Kafka stops answering, connections stay open
        try:
            for name in files[3:]:
                write_atomically(hot / name, product_image("fabric", len(name), 32))
            peak = 0.0
            for _ in range(60):  # 6 s frozen
                await asyncio.sleep(0.1)
                peak = max(
                    peak, sample("lineguard_camera_gateway_buffer_frames", {"camera_id": "pause-live"})
                )
                assert not gateway.done()
        finally:
            os.kill(broker_pid, signal.SIGCONT)
        assert sample("lineguard_camera_gateway_frames_dropped_total", dropped) - dropped_before >= 20
        assert peak <= 4  # bounded: never more than buffer_frames
        assert sample("lineguard_camera_gateway_transactions_total", {"outcome": "failed"}) > failed_before
        assert len(list(hot.glob("f-*"))) >= 5  # the folder waited; nothing was dropped from it
        await wait_until(lambda: not list(hot.glob("f-*")), 120, "every file sent after Kafka came back")
        await wait_until(
            lambda: sample("lineguard_camera_gateway_kafka_up", {}) == 1, 60, "the gateway publishing again"
        )
        await asyncio.sleep(2.0)
    assert (
        sample(
            "lineguard_camera_gateway_frames_dropped_total",
            {"camera_id": "pause-hot", "reason": "buffer_full"},
        )
        == 0
    )
    from_folder = Counter(f.attributes["file"] for f in frames.received.values if f.camera_id == "pause-hot")
    assert from_folder == Counter(files), from_folder
    live = [f.frame_id for f in frames.received.values if f.camera_id == "pause-live"]
    assert len(live) == len(set(live)) > 0
