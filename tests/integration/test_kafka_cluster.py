"""The line on a three-node KRaft cluster (topics with 3 replicas, min.insync.replicas 2): SIGKILL the
broker that leads the frames and verdicts partitions mid-stream, and every frame still ends as
exactly one committed verdict or one dead letter; nothing is lost, nothing duplicated."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.camera_sim.service import run_camera_sim
from shared.kafka.client import delete_topics, ensure_topics
from shared.kafka.cluster import KafkaCluster
from shared.messages.schemas import DeadLetter, Verdict
from shared.settings import Settings
from tests.support.broker import throwaway_cluster
from tests.support.line import LineModels, frame_id_of, scorer_process, scorer_settings, sim_options
from tests.support.topics import TopicReader, partition_leaders
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    with throwaway_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


async def test_killing_the_leading_broker_mid_stream_loses_and_duplicates_no_frame(
    kafka_cluster: KafkaCluster, line_models: LineModels, tmp_path: Path
) -> None:
    base = Settings(
        kafka_bootstrap=kafka_cluster.bootstrap, topic_prefix="leader", kafka=kafka_cluster.kafka_settings()
    )
    topics = await ensure_topics(base, frames_partitions=2)
    settings = scorer_settings(base)
    count = 120
    options = sim_options(count=count, cameras=2, rate=4.0, bad_rate=0.05, run_id="leader")
    scorer = scorer_process(settings, line_models.a, tmp_path / "scorer.log")
    try:
        async with (
            TopicReader(settings, "verdicts", Verdict) as verdicts,
            TopicReader(settings, "dlq", DeadLetter) as dlq,
        ):
            await scorer.wait_for_log("partitions_assigned", 120)
            sender = asyncio.create_task(run_camera_sim(settings, options))  # ~15 s of frames
            await wait_until(lambda: len(verdicts) >= 20, 90, "the first verdicts")
            leaders = await partition_leaders(settings, "frames", "verdicts")
            # The node that leads frames partition 0, and with it whatever else it leads.
            victim = leaders[("frames", 0)]
            led = sorted(tp for tp, node in leaders.items() if node == victim)
            killed_at = time.monotonic()
            await asyncio.to_thread(kafka_cluster.kill, victim)
            before = len(verdicts)
            await wait_until(lambda: len(verdicts) > before, 60, "verdicts after the leader died")
            resumed_s = time.monotonic() - killed_at
            stats = await sender
            good = stats.sent - stats.bad
            got = await verdicts.wait_for(good, timeout=120, settle=3.0)
            letters = await dlq.wait_for(stats.bad, timeout=30, settle=0.5)
            after = await partition_leaders(settings, "frames", "verdicts")
            assert scorer.process.poll() is None, f"the scorer died with the broker:\n{scorer.log_tail()}"
            assert await scorer.terminate() == 0
    finally:
        scorer.kill()
        await delete_topics(base, topics)
    assert ("frames", 0) in led and after[("frames", 0)] not in (victim, -1), (led, after)
    assert resumed_s < 45, f"the line took {resumed_s:.1f}s to score again"
    ids = Counter(v.frame_id for v in got.values)
    assert not {f: n for f, n in ids.items() if n > 1}, "duplicate verdicts"
    letter_ids = Counter(frame_id_of(d.original_headers) for d in letters.values)
    assert len(letters.values) == stats.bad and max(letter_ids.values(), default=1) == 1
    assert len(ids) == good and not set(ids) & set(letter_ids)
    assert set(ids) | set(letter_ids) == {f"leader-{i:07d}" for i in range(count)}
