"""Progress, not liveness: the scorer's watchdog and what ``/healthz`` answers.

A partition *has work* when the broker holds records past the consumer's position, or records were
fetched and not committed yet. It *makes progress* when its position or its committed offset moves.
A partition with work and no progress for ``timeout_s`` is stalled; so is the intake loop when it
has not come round for that long, and a rebalance that has not finished. Any stall turns health red
and the scorer exits non-zero (the group rebalances; a restarted scorer takes over).

Pure: the service feeds it observations and the clock; nothing here touches Kafka.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass
class _Track:
    mark: tuple[int | None, int]  # (position, committed offset)
    since: float  # when it last moved, or last had no work
    work: bool


@dataclass(frozen=True)
class Stall:
    kind: str  # partition, intake, rebalance
    what: str  # which partition or loop
    seconds: float
    detail: str


class ProgressWatchdog:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._tracks: dict[Any, _Track] = {}
        self._beats: dict[str, float] = {}

    def observe(
        self,
        partition: Any,
        now: float,
        *,
        end: int | None,
        position: int | None,
        committed: int,
        fetched: int,
    ) -> None:
        """One look at a partition: ``end`` (the last stable offset, None if unknown), the consumer's
        ``position``, the ``committed`` offset and one past the last ``fetched`` record."""
        work = (end is not None and position is not None and end > position) or fetched > committed
        mark = (position, committed)
        track = self._tracks.get(partition)
        if track is None or mark != track.mark or not work:
            self._tracks[partition] = _Track(mark, now, work)
        else:
            track.work = work

    def keep_only(self, partitions: set[Any]) -> None:
        """Forget partitions no longer assigned (a new assignment starts a new clock)."""
        for gone in set(self._tracks) - partitions:
            del self._tracks[gone]

    def beat(self, loop: str, now: float) -> None:
        """A loop that must keep coming round (intake) came round."""
        self._beats[loop] = now

    def stalls(self, now: float, *, paused_since: float | None = None) -> list[Stall]:
        found = [
            Stall(
                "partition",
                str(partition),
                now - track.since,
                f"no progress at position/committed {track.mark}",
            )
            for partition, track in self._tracks.items()
            if track.work and now - track.since >= self.timeout_s
        ]
        found += [
            Stall("intake", loop, now - last, "the loop has not come round")
            for loop, last in self._beats.items()
            if now - last >= self.timeout_s
        ]
        if paused_since is not None and now - paused_since >= self.timeout_s:
            found.append(Stall("rebalance", "partitions", now - paused_since, "no assignment"))
        return found


class Health:
    """What ``/healthz`` answers (read from the metrics server's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status = "starting"
        self._detail = ""

    def set(self, status: str, detail: str = "") -> None:
        with self._lock:
            if self._status == "failed":  # a failing scorer does not come back: it exits
                return
            self._status, self._detail = status, detail

    @property
    def status(self) -> str:
        return self._status

    def report(self) -> tuple[bool, dict[str, str]]:
        """(healthy, body): healthy only while making progress ("ok")."""
        with self._lock:
            return self._status == "ok", {"status": self._status, "detail": self._detail}
