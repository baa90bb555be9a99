"""The line on a real broker: frames in, exactly one verdict or dead letter out per frame."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from services.camera_sim.service import run_camera_sim
from services.camera_sim.truth import read_truth
from shared.messages.schemas import DeadLetter, DefectEvent, Frame, Verdict
from shared.settings import LatePolicy, Settings
from tests.support.line import (
    LineModels,
    frame_id_of,
    running_scorer,
    scorer_settings,
    sim_options,
    traceparent_trace_id,
)
from tests.support.topics import TopicReader
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BAD_REASONS = {
    "corrupt_bytes": "corrupt",
    "truncated_image": "corrupt",
    "wrong_schema": "wrong_schema",
    "oversized_dimensions": "too_large",
    "undecodable": "malformed",
}


class LineReaders(NamedTuple):
    verdicts: TopicReader
    dlq: TopicReader
    defects: TopicReader
    frames: TopicReader


@asynccontextmanager
async def scored_line(
    settings: Settings, model_dir: Path, frame_type: type | None
) -> AsyncIterator[LineReaders]:
    """A scorer on ``model_dir``, and a reader on each topic it reads or writes, started before it
    (``frame_type`` None: raw frames, for runs that send bad ones)."""
    async with (
        TopicReader(settings, "verdicts", Verdict) as verdicts,
        TopicReader(settings, "dlq", DeadLetter) as dlq,
        TopicReader(settings, "defects", DefectEvent) as defects,
        TopicReader(settings, "frames", frame_type) as frames,
        running_scorer(settings, model_dir),
    ):
        yield LineReaders(verdicts, dlq, defects, frames)


async def test_each_good_frame_gets_one_verdict_and_each_bad_frame_one_dead_letter(
    kafka_settings: Settings, line_models: LineModels, tmp_path: Path
) -> None:
    settings = scorer_settings(kafka_settings)
    truth_path = tmp_path / "truth.jsonl"
    options = sim_options(count=40, cameras=2, rate=20.0, bad_rate=0.25, truth=truth_path, seed=3)
    async with scored_line(settings, line_models.a, frame_type=None) as (verdicts, dlq, defects, frames):
        stats = await run_camera_sim(settings, options)
        truth = read_truth(truth_path)
        good = {f for f, r in truth.items() if r.bad is None}
        bad = {f: r.bad for f, r in truth.items() if r.bad is not None}
        assert stats.sent == 40 and len(bad) == stats.bad and set(bad.values()) == set(BAD_REASONS)
        got_verdicts = await verdicts.wait_for(len(good), timeout=90)
        got_dlq = await dlq.wait_for(len(bad), timeout=30, settle=0.5)
    verdict_ids = [v.frame_id for v in got_verdicts.values]
    assert Counter(verdict_ids) == Counter(good)  # exactly one each, nothing else
    letters = {frame_id_of(letter.original_headers): letter for letter, _ in got_dlq.items}
    assert len(got_dlq.items) == len(bad) and set(letters) == set(bad), [
        (frame_id_of(letter.original_headers), letter.source_partition, letter.source_offset, letter.reason)
        for letter, _ in got_dlq.items
    ]
    for frame_id, kind in bad.items():
        letter = letters[frame_id]
        assert letter.reason == BAD_REASONS[kind], (kind, letter.detail)
        assert letter.service == "scorer" and letter.original_value
        assert (frame_id_of(letter.original_headers) or "") == frame_id
    # Every reject and review has its defect event, and nothing else does.
    flagged = {v.frame_id for v in got_verdicts.values if v.decision in ("reject", "review")}
    assert Counter(e.verdict.frame_id for e in defects.received.values) == Counter(flagged)
    for event in defects.received.values:
        assert event.anomaly_map_png.startswith(b"\x89PNG") and event.width == event.height == 96
    # Verdicts come from the model, and carry the frame's trace on.
    assert {v.model_version for v in got_verdicts.values} == {line_models.version_a}
    assert {v.product_class for v in got_verdicts.values} <= {"washer", "fabric", "unknown"}
    for verdict in got_verdicts.values:
        assert verdict.station_id == settings.camera_sim.station_id and not verdict.late
        assert verdict.product_class == truth[verdict.frame_id].product
    frame_traces = {frame_id_of(h): traceparent_trace_id(h) for _, h in frames.received.items}
    for verdict, headers in got_verdicts.items:
        assert traceparent_trace_id(headers) == frame_traces[verdict.frame_id]


class FirstBatchSlow:
    """The real model, except that its first batch takes 1.5 s longer, so later batches overtake it."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._lock = threading.Lock()
        self.started = 0
        self.finished: list[int] = []  # call numbers in the order their scoring ended

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def score_batch(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.started += 1
            call = self.started
        if call == 1:
            time.sleep(1.5)
        try:
            return self._model.score_batch(*args, **kwargs)
        finally:
            with self._lock:
                self.finished.append(call)


async def test_batches_scored_at_once_are_published_in_frame_order(
    kafka_settings: Settings, line_models: LineModels
) -> None:
    from services.scorer.models import ServingModel

    settings = scorer_settings(kafka_settings, model_workers=3, max_batch=2, max_wait_ms=0)
    async with (
        TopicReader(settings, "verdicts", Verdict) as verdicts,
        TopicReader(settings, "frames", None) as frames,
        running_scorer(settings, line_models.a) as scorer,
    ):
        current = scorer.holder.current()
        slow = FirstBatchSlow(current.model)
        scorer.holder.offer(ServingModel(slow, current.version, current.source))  # swapped in next batch
        await run_camera_sim(settings, sim_options(count=12, cameras=1, rate=50.0, run_id="order"))
        got = await verdicts.wait_for(12, timeout=60)
    assert slow.finished.index(1) > 0, f"no batch overtook the first: {slow.finished}"
    sent = [frame_id_of(headers) for _, headers in frames.received.items]
    published = [v.frame_id for v in got.values]
    # One camera, one partition: the same order.
    assert published == sent, f"verdicts {published} frames {sent} finished {slow.finished}"


@pytest.mark.parametrize("policy", [LatePolicy.REJECT, LatePolicy.SCORE])
async def test_late_frame_gets_the_fail_safe_verdict(
    kafka_settings: Settings, line_models: LineModels, policy: LatePolicy
) -> None:
    settings = scorer_settings(kafka_settings, late_policy=policy)
    async with (
        TopicReader(settings, "verdicts", Verdict) as verdicts,
        running_scorer(settings, line_models.a),
    ):
        # deadline 0 ms: every frame is late by the time any scorer decides.
        await run_camera_sim(settings, sim_options(count=6, deadline_ms=0, run_id="late", defect_rate=0.0))
        await run_camera_sim(
            settings, sim_options(count=6, deadline_ms=600_000, run_id="ontime", defect_rate=0.0)
        )
        got = await verdicts.wait_for(12, timeout=60)
    late = [v for v in got.values if v.frame_id.startswith("late")]
    on_time = [v for v in got.values if v.frame_id.startswith("ontime")]
    assert len(late) == len(on_time) == 6
    assert all(v.late and "late by" in v.reason and "deadline 0 ms" in v.reason for v in late)
    assert not any(v.late for v in on_time)
    if policy is LatePolicy.REJECT:
        assert {v.decision for v in late} == {"reject"}
        assert all("fail-safe reject" in v.reason for v in late)
    else:  # the model's own decision stands, marked late
        assert all(f"model said {v.decision}" in v.reason for v in late)
        assert not any("fail-safe" in v.reason for v in late)


async def test_two_scorers_share_partitions_and_rebalance_when_one_stops(
    make_kafka_settings, line_models: LineModels
) -> None:
    settings = scorer_settings(make_kafka_settings(frames_partitions=4))
    options = sim_options(count=90, cameras=4, rate=6.0, bad_rate=0.0, seed=5, run_id="rb")  # ~4 s of frames
    async with (
        TopicReader(settings, "verdicts", Verdict) as verdicts,
        running_scorer(settings, line_models.a) as first,
    ):
        async with running_scorer(settings, line_models.a) as second:
            await wait_until(
                lambda: (
                    len(first.service.partitions.assigned()) == 2
                    and len(second.service.partitions.assigned()) == 2
                ),
                60,
                "both scorers to own two partitions",
            )
            sender = asyncio.create_task(run_camera_sim(settings, options))
            await wait_until(
                lambda: second.service.committed_records >= 10, 60, "the second scorer to commit"
            )
        # The second scorer stopped gracefully mid-stream; the first takes over every partition.
        await wait_until(
            lambda: len(first.service.partitions.assigned()) == 4, 60, "rebalance to the first scorer"
        )
        stats = await sender
        got = await verdicts.wait_for(stats.sent, timeout=90)
        assert first.service.committed_records > 0 and second.service.committed_records > 0
        assert first.service.committed_records + second.service.committed_records == stats.sent
    assert Counter(v.frame_id for v in got.values) == Counter(f"rb-{i:07d}" for i in range(90))


async def test_consecutive_rejects_raise_one_operator_alert_in_the_verdicts_transaction(
    kafka_settings: Settings, line_models: LineModels
) -> None:
    from shared.messages.schemas import AlertEvent

    settings = scorer_settings(kafka_settings, late_policy=LatePolicy.REJECT, max_batch=2)
    alerts_section = settings.alerts.model_copy(update={"consecutive_rejects": 4})
    settings = settings.model_copy(update={"alerts": alerts_section})
    async with (
        TopicReader(settings, "verdicts", Verdict) as verdicts,
        TopicReader(settings, "alerts", AlertEvent) as alerts,
        running_scorer(settings, line_models.a),
    ):
        # deadline 0 ms: every frame is late, so the fail-safe policy rejects all 6 in a row.
        await run_camera_sim(settings, sim_options(count=6, deadline_ms=0, run_id="streak", defect_rate=0.0))
        got = await verdicts.wait_for(6, timeout=60)
        raised = await alerts.wait_for(1, timeout=30)
    assert {v.decision for v in got.values} == {"reject"}
    streak = [a for a in raised.values if a.kind == "consecutive_rejects"]
    assert len(streak) == 1, raised.values  # once per streak, not once per reject after the 4th
    alert = streak[0]
    rejected = [v.frame_id for v in got.values]
    assert alert.frame_ids == rejected[:4]
    assert alert.station_id == settings.camera_sim.station_id and alert.severity == "critical"


@pytest.mark.parametrize("encoding", ["jpeg", "png", "raw8"])
async def test_camera_sized_frames_are_scored_reduced_and_answered_in_the_frames_size(
    kafka_settings: Settings, line_models: LineModels, tmp_path: Path, encoding: str
) -> None:
    from shared.messages.anomaly_map import decode_anomaly_map

    width, height = 576, 576  # 6x the model's input (renders are square): decoded reduced, answered full size
    settings = scorer_settings(kafka_settings)
    truth_path = tmp_path / "truth.jsonl"
    options = sim_options(
        count=8, defect_rate=0.5, frame_size=(width, height), encoding=encoding, truth=truth_path, seed=7
    )
    async with scored_line(settings, line_models.a, frame_type=Frame) as (verdicts, dlq, defects, frames):
        await run_camera_sim(settings, options)
        got = await verdicts.wait_for(8, timeout=90)
        flagged = [v for v in got.values if v.decision in ("reject", "review")]
        await defects.wait_for(len(flagged), timeout=30, settle=0.5)
    assert not dlq.received.values
    truth = read_truth(truth_path)
    assert Counter(v.frame_id for v in got.values) == Counter(list(truth))
    for verdict in got.values:
        # Scaled-up noisy renders are off the model's training domain (96 px clean renders): routing
        # may refuse them as unknown, at full-size decoding too; it must not mistake the product.
        assert verdict.product_class in (truth[verdict.frame_id].product, "unknown")
        for region in verdict.regions:  # in the camera frame's pixels, not the model's
            assert region.x >= 0 and region.x + region.width <= width
            assert region.y >= 0 and region.y + region.height <= height
    assert any(v.regions for v in flagged), "no flagged frame had a region to check"
    assert any(r.x + r.width > 96 or r.y + r.height > 96 for v in flagged for r in v.regions)
    sent = {frame.frame_id: frame for frame in frames.received.values}
    assert len(defects.received.values) == len(flagged)
    for event in defects.received.values:
        assert (event.width, event.height, event.encoding) == (width, height, encoding)
        map_height, map_width = decode_anomaly_map(event.anomaly_map_png).shape
        # Scored reduced, so the map comes at the scored resolution, with the frame's aspect ratio.
        assert map_width < width and map_height < height
        assert abs(map_width / map_height - width / height) < 0.05
        assert event.image == sent[event.verdict.frame_id].image  # the camera's bytes, not a re-encoding
