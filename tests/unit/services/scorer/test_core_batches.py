"""How the scorer splits a fetched batch over its idle model workers."""

from __future__ import annotations

import pytest

from services.scorer.core import (
    RawRecord,
    RecordOutcome,
    ScoredBatch,
    fresh_outcomes,
    merge_batches,
    split_for_idle_workers,
)


def records(n: int) -> list[RawRecord]:
    return [RawRecord("frames", 0, offset, b"cam", b"", ()) for offset in range(n)]


@pytest.mark.parametrize(
    ("count", "idle", "sizes"),
    [
        (8, 2, [4, 4]),
        (7, 2, [4, 3]),
        (8, 1, [8]),
        (8, 0, [8]),  # every worker busy: the batch waits whole for the first one free
        (2, 3, [1, 1]),  # never an empty part
        (1, 2, [1]),
        (10, 4, [3, 3, 2, 2]),
    ],
)
def test_a_batch_is_split_into_consecutive_parts_one_per_idle_worker(
    count: int, idle: int, sizes: list[int]
) -> None:
    batch = records(count)
    parts = split_for_idle_workers(batch, idle)
    assert [len(part) for part in parts] == sizes
    assert [r for part in parts for r in part] == batch  # nothing lost, order kept


def test_merged_batches_keep_intake_order_and_each_outcomes_epoch() -> None:
    first, second = records(3), [RawRecord("frames", 1, 7, b"cam", b"", ())]
    batches = [
        ScoredBatch([RecordOutcome(r) for r in first], [1, 1, 1], ["a"]),
        ScoredBatch([RecordOutcome(r) for r in second], [2], ["b"]),
    ]
    merged = merge_batches(batches)
    assert [o.record for o in merged.outcomes] == first + second
    assert merged.epochs == [1, 1, 1, 2]
    assert merged.links == ["a", "b"]
    assert merge_batches(batches[:1]) is batches[0]


def test_a_record_fetched_before_and_after_a_seek_is_published_once() -> None:
    """Offsets 0-1 fetched in epoch 1, the partition sought back (epoch 2), 0-2 fetched again: both
    copies can meet in one merged batch, and only the current epoch's go out, each once."""
    before = ScoredBatch([RecordOutcome(r) for r in records(2)], [1, 1], [])
    after = ScoredBatch([RecordOutcome(r) for r in records(3)], [2, 2, 2], [])
    merged = merge_batches([before, after])
    tagged = list(zip(merged.outcomes, merged.epochs, strict=True))
    assert [o.record.offset for o in fresh_outcomes(tagged, epoch=2, next_offset=0)] == [0, 1, 2]
    assert [o.record.offset for o in fresh_outcomes(tagged, epoch=2, next_offset=2)] == [2]  # 0-1 committed
    assert fresh_outcomes(tagged, epoch=3, next_offset=0) == []  # sought again since: all stale


def test_an_offset_repeated_within_an_epoch_is_published_once() -> None:
    repeated = [RecordOutcome(r) for r in records(2)] * 2
    fresh = fresh_outcomes([(o, 5) for o in repeated], epoch=5, next_offset=0)
    assert [o.record.offset for o in fresh] == [0, 1]


def test_partitions_take_turns_starting_one_further_each_time() -> None:
    from aiokafka import TopicPartition

    from services.scorer.core import in_turn

    parts = [TopicPartition("frames", p) for p in (2, 0, 1)]
    firsts = [in_turn(parts, turn)[0].partition for turn in range(6)]
    assert firsts == [0, 1, 2, 0, 1, 2]
    assert [tp.partition for tp in in_turn(parts, 1)] == [1, 2, 0]
    assert in_turn([], 3) == []
