"""How the scorer splits a fetched batch over its idle model workers."""

from __future__ import annotations

import pytest

from services.scorer.handler import RawRecord
from services.scorer.main import split_for_idle_workers


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


def test_merged_batches_keep_intake_order_and_every_epoch() -> None:
    from services.scorer.handler import Outcome
    from services.scorer.main import ScoredBatch, merge_batches

    first, second = records(3), [RawRecord("frames", 1, 7, b"cam", b"", ())]
    batches = [
        ScoredBatch([Outcome(r) for r in first], {("frames", 0, r.offset): 1 for r in first}, ["a"]),
        ScoredBatch([Outcome(r) for r in second], {("frames", 1, 7): 2}, ["b"]),
    ]
    merged = merge_batches(batches)
    assert [o.record for o in merged.outcomes] == first + second
    assert merged.epochs == {
        ("frames", 0, 0): 1,
        ("frames", 0, 1): 1,
        ("frames", 0, 2): 1,
        ("frames", 1, 7): 2,
    }
    assert merged.links == ["a", "b"]
    assert merge_batches(batches[:1]) is batches[0]
