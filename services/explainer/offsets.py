"""Which offsets may be committed when events finish out of order (or are held for later).

Kafka commits are a single position per partition, so the committable position is the end of the
contiguous run of finished offsets from the oldest uncommitted one. A held event stops that run:
everything after it stays uncommitted too, which is what "never lose a held event" costs (those
events are answered from the report store, without a VLM call, if they are re-delivered).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


class OffsetTracker(Generic[P]):
    def __init__(self) -> None:
        self._pending: dict[P, set[int]] = {}  # received, not yet finished (in flight or held)
        self._finished: dict[P, set[int]] = {}
        self._committed: dict[P, int] = {}

    def received(self, partition: P, offset: int) -> None:
        self._pending.setdefault(partition, set()).add(offset)

    def finished(self, partition: P, offset: int) -> None:
        pending = self._pending.get(partition)
        if pending is None or offset not in pending:
            return  # a partition revoked meanwhile: its new owner handles the event
        pending.discard(offset)
        self._finished.setdefault(partition, set()).add(offset)

    def committable(self) -> dict[P, int]:
        """Positions (offset of the next record to read) that advanced since the last call.
        Offsets may have gaps (transaction markers), so a partition advances past every finished
        offset below its lowest unfinished one."""
        out: dict[P, int] = {}
        for partition, finished in self._finished.items():
            pending = self._pending.get(partition, set())
            lowest_pending = min(pending) if pending else None
            done = sorted(o for o in finished if lowest_pending is None or o < lowest_pending)
            if not done:
                continue
            finished.difference_update(done)
            position = done[-1] + 1
            if position > self._committed.get(partition, -1):
                out[partition] = position
        return out

    def mark_committed(self, positions: dict[P, int]) -> None:
        self._committed.update(positions)

    def outstanding(self) -> int:
        return sum(len(p) for p in self._pending.values())

    def forget(self, partition: P) -> None:
        """Drop a revoked partition's state."""
        self._pending.pop(partition, None)
        self._finished.pop(partition, None)
        self._committed.pop(partition, None)
