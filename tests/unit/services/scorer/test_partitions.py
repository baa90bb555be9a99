"""Rebalance bookkeeping of the per-partition transactional producers (no broker needed here; the
real-broker behaviour is covered by tests/integration/test_line_*.py)."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from services.scorer.partitions import PartitionTransactions
from shared.settings import Settings


class RecordingProducer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")

    async def begin_transaction(self) -> None:
        self.calls.append("begin")

    async def commit_transaction(self) -> None:
        self.calls.append("commit")

    async def stop(self) -> None:
        self.calls.append("stop")

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}


class CoordinatorView:
    """The consumer calls the listener makes: committed offsets as the group coordinator reports them."""

    def __init__(self, committed: dict[int, int | None]) -> None:
        self.committed_offsets = committed
        self.seeks: list[tuple[int, int]] = []

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_offsets.get(tp.partition)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp.partition, offset))

    def resume(self, *tps: Any) -> None:
        pass

    def pause(self, *tps: Any) -> None:
        pass


async def test_a_kept_partition_resumes_after_its_own_commits_even_if_the_coordinator_lags() -> None:
    consumer = CoordinatorView({0: None, 1: 7})
    producers: list[RecordingProducer] = []

    def make_producer(settings: Any, **kwargs: Any) -> RecordingProducer:
        producers.append(RecordingProducer())
        return producers[-1]

    owner = PartitionTransactions(Settings(), consumer, make_producer=make_producer)
    p0, p1 = TopicPartition("f", 0), TopicPartition("f", 1)
    await owner.on_assigned([p0, p1])
    assert sorted(consumer.seeks) == [(0, 0), (1, 7)]
    assert all(p.calls == ["start", "begin", "commit"] for p in producers)  # zombies fenced first

    # This scorer commits offsets 0-4 of partition 0; the coordinator still answers "nothing".
    state = owner.state("f", 0)
    assert state is not None
    state.next_offset = 5
    await owner.on_revoked([p0, p1])
    consumer.seeks.clear()
    await owner.on_assigned([p0])  # partition 1 moved away, partition 0 stayed

    assert consumer.seeks == [(0, 5)]  # not back to 0: those frames already have their verdicts
    assert producers[1].calls[-1] == "stop" and len(producers) == 2  # p0's producer kept, p1's stopped
    assert owner.assigned() == [0]


async def test_a_newly_assigned_partition_starts_from_the_coordinators_offset() -> None:
    consumer = CoordinatorView({3: 42})
    owner = PartitionTransactions(Settings(), consumer, make_producer=lambda s, **k: RecordingProducer())
    await owner.on_assigned([TopicPartition("f", 3)])
    assert consumer.seeks == [(3, 42)]
