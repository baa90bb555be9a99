"""Offset tracking: which offsets the service may commit when events finish out of order."""

from services.explainer.offsets import OffsetTracker


def test_offsets_commit_only_the_contiguous_finished_run() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    for offset in (10, 11, 12, 14):  # 13 is a transaction marker: never delivered
        tracker.received("p0", offset)
    tracker.finished("p0", 11)
    assert tracker.committable() == {}  # 10 still in flight
    tracker.finished("p0", 10)
    assert tracker.committable() == {"p0": 12}
    tracker.mark_committed({"p0": 12})
    tracker.finished("p0", 14)
    assert tracker.committable() == {}  # 12 is held
    tracker.finished("p0", 12)
    assert tracker.committable() == {"p0": 15}  # past the gap
    assert tracker.outstanding() == 0


def test_offsets_of_a_revoked_partition_are_forgotten() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.received("p1", 0)
    tracker.forget("p1")
    tracker.finished("p1", 0)  # a late finish for a partition we no longer own
    assert tracker.committable() == {}
