"""Shadow scoring on the real broker: its own consumer group (never the scorer's), one candidate verdict
per good frame on shadow-verdicts, bad frames counted, serving verdicts joined live."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from services.camera_sim.service import run_camera_sim
from services.scorer.models import load_model_dir
from services.shadow.core import Candidate
from services.shadow.service import RUN_HEADER, ShadowRun, Window
from shared.frames_store import frame_file_stem
from shared.kafka.client import header, make_consumer, make_producer
from shared.messages.codec import decode, encode
from shared.messages.schemas import Verdict
from shared.settings import Settings, ShadowSettings
from tests.support.feedback import judgement
from tests.support.line import LineModels, running_scorer, scorer_settings, sim_options
from tests.support.topics import TopicReader, read_records
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _shadow_settings(settings: Settings) -> Settings:
    settings = scorer_settings(settings)
    shadow = ShadowSettings(group_id=f"{settings.topic_prefix}-shadow", join_wait_s=2.0, read_timeout_s=60)
    return settings.model_copy(update={"shadow": shadow})


def _candidate(path: Path) -> tuple[object, Candidate]:
    loaded = load_model_dir(path)
    assert loaded.manifest_sha256 is not None
    return loaded.model, Candidate(loaded.version, loaded.manifest_sha256, str(path))


async def _committed(settings: Settings, group_id: str) -> list[int | None]:
    topic = settings.topic("frames")
    tps = [TopicPartition(topic, p) for p in range(2)]
    async with make_consumer(settings, group_id=group_id) as consumer:
        consumer.assign(tps)
        return [await consumer.committed(tp) for tp in tps]


async def _ends(settings: Settings) -> list[int]:
    topic = settings.topic("frames")
    tps = [TopicPartition(topic, p) for p in range(2)]
    async with make_consumer(settings, group_id=None) as consumer:
        ends = await consumer.end_offsets(tps)
        return [ends[tp] for tp in tps]


async def test_a_replay_scores_in_its_own_group_and_never_commits_the_scorers(
    kafka_settings: Settings, line_models: LineModels
) -> None:
    settings = _shadow_settings(kafka_settings)
    options = sim_options(count=16, cameras=2, bad_rate=0.25, deadline_ms=50, run_id="replay")
    stats = await run_camera_sim(settings, options)
    assert 0 < stats.bad < stats.sent
    model, candidate = await asyncio.to_thread(_candidate, line_models.b)
    run = ShadowRun(settings, model, candidate, Window(from_offset=0))
    report = await run.run(asyncio.Event())

    good = stats.sent - stats.bad
    assert report["frames"]["scored"] == good and report["frames"]["bad"] == stats.bad
    # No scorer ran: nothing to compare with, and said so.
    assert report["frames"]["without_serving_verdict"] == good and report["frames"]["compared"] == 0
    assert report["agreement"] is None and report["candidate"]["model_version"] == line_models.version_b
    records = await read_records(settings, "shadow-verdicts", good, timeout_s=30)
    assert len(records) == good
    verdicts = [decode(r.value, Verdict) for r in records]
    assert len({v.frame_id for v in verdicts}) == good
    assert {v.model_version for v in verdicts} == {line_models.version_b}
    # Replayed frames are past their deadline: each verdict is marked late and keeps its model's
    # decision (the late policy "score"), where the serving scorer's policy would fail safe.
    assert all(v.late and f"model said {v.decision}" in v.reason for v in verdicts)
    assert {header(r.headers, RUN_HEADER) for r in records} == {run.run_id.encode()}
    # Its own group is at the end of frames; the scorer's group has nothing committed.
    assert await _committed(settings, settings.shadow.group_id) == await _ends(settings)
    assert await _committed(settings, settings.scorer.group_id) == [None, None]


async def test_a_live_shadow_run_joins_the_serving_verdicts_as_they_come(
    kafka_settings: Settings, line_models: LineModels
) -> None:
    settings = _shadow_settings(kafka_settings)
    await run_camera_sim(settings, sim_options(count=4, run_id="before"))  # before the run: not scored
    model, candidate = await asyncio.to_thread(_candidate, line_models.b)
    stop = asyncio.Event()
    # The candidate was trained on frame live-0000000: its label must not grade it.
    run = ShadowRun(settings, model, candidate, Window(live=True), trained={frame_file_stem("live-0000000")})
    async with (
        TopicReader(settings, "verdicts", Verdict) as served,
        running_scorer(settings, line_models.a),
    ):
        shadowing = asyncio.create_task(run.run(stop))
        await asyncio.wait_for(run.positioned.wait(), 60)
        await run_camera_sim(settings, sim_options(count=12, cameras=2, run_id="live"))
        await wait_until(lambda: run.progress.scored >= 12, 120, "the shadow to score the live frames")
        await served.wait_for(16, timeout=60, settle=0)
        by_frame = {v.frame_id: v for v in served.received.values}
        async with make_producer(settings) as producer:
            for frame_id, label in (("live-0000000", "defect"), ("live-0000001", "good")):
                feedback = judgement(by_frame[frame_id], label)
                await producer.send_and_wait(
                    settings.topic("feedback"), encode(feedback), key=frame_id.encode()
                )
        stop.set()  # a stop ends the scoring; the frames scored still get their serving verdicts
        report = await asyncio.wait_for(shadowing, 120)
    assert report["frames"]["scored"] == 12 and report["frames"]["compared"] == 12
    assert report["serving_versions"] == {line_models.version_a: 12}
    assert report["window"]["mode"] == "live"
    assert report["labels"] == {"defects": 0, "goods": 1, "excluded_trained": 1}
    changed = sum(report["changes"].values())
    assert report["agreement"] == round((12 - changed) / 12, 4)
    latency = report["latency_ms"]
    assert latency["candidate_end_to_end"]["count"] == 12 and latency["serving_end_to_end"]["count"] == 12
    assert latency["candidate_scoring_per_frame"]["count"] == 12
    # The line's own verdicts: one per frame, all from the serving model.
    assert len(served.received.values) == 16
    assert {v.model_version for v in served.received.values} == {line_models.version_a}
