"""Bounded buffers between the cameras and the publisher: one per camera, never unbounded.

Each camera's buffer holds at most ``max_frames`` frames and ``max_bytes`` encoded bytes (one frame
is always admitted, however large, so a big frame cannot wedge its camera). When it is full:

- ``block``: the source waits for room (hot folders always do: their files wait on disk);
- ``drop_oldest``: the oldest buffered frame is dropped and counted, the new one goes in (a live
  stream keeps up with the present and loses the past).

The publisher takes frames round robin across cameras, so a busy camera cannot starve the others.
Frames it holds in an unfinished transaction are bounded by its batch size.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from services.camera_gateway import metrics
from services.camera_gateway.core import Outgoing
from shared.errors import LineguardError
from shared.settings import OverflowPolicy


@dataclass
class _CameraQueue:
    max_frames: int
    max_bytes: int
    policy: OverflowPolicy
    items: deque[Outgoing] = field(default_factory=deque)
    bytes: int = 0

    def full_for(self, item: Outgoing) -> bool:
        if not self.items:
            return False
        return len(self.items) >= self.max_frames or self.bytes + item.size > self.max_bytes


class BufferClosed(LineguardError):
    """The gateway is stopping: no more frames are accepted."""


class BufferSet:
    def __init__(self, on_drop: Callable[[Outgoing, str], None] | None = None) -> None:
        self._queues: dict[str, _CameraQueue] = {}
        self._order: list[str] = []
        self._next = 0
        self._changed = asyncio.Condition()
        self._closed = False
        self._on_drop = on_drop

    def add_camera(self, camera_id: str, max_frames: int, max_bytes: int, policy: OverflowPolicy) -> None:
        if max_frames < 1 or max_bytes < 1:
            raise ValueError("a buffer holds at least one frame")
        self._queues[camera_id] = _CameraQueue(max_frames, max_bytes, policy)
        self._order.append(camera_id)

    def __len__(self) -> int:
        return sum(len(q.items) for q in self._queues.values())

    def pending(self, camera_id: str) -> int:
        return len(self._queues[camera_id].items)

    async def put(self, item: Outgoing) -> None:
        """Add a frame by its camera's policy; raises ``BufferClosed`` once the gateway is stopping."""
        queue = self._queues[item.camera_id]
        async with self._changed:
            if queue.full_for(item) and queue.policy is OverflowPolicy.BLOCK:
                started = time.monotonic()
                await self._changed.wait_for(lambda: self._closed or not queue.full_for(item))
                metrics.BLOCKED_SECONDS.labels(camera_id=item.camera_id).inc(time.monotonic() - started)
            if self._closed:
                raise BufferClosed()
            while queue.full_for(item):  # drop_oldest
                oldest = queue.items.popleft()
                queue.bytes -= oldest.size
                metrics.dropped(oldest.camera_id, "buffer_full")
                if self._on_drop is not None:
                    self._on_drop(oldest, "buffer_full")
            queue.items.append(item)
            queue.bytes += item.size
            self._gauges(item.camera_id, queue)
            self._changed.notify_all()

    async def take(self, max_items: int) -> list[Outgoing]:
        """Up to ``max_items`` frames, round robin over cameras; waits for at least one.

        Returns an empty list only when the buffers are closed and empty.
        """
        async with self._changed:
            await self._changed.wait_for(lambda: self._closed or len(self) > 0)
            batch: list[Outgoing] = []
            while len(batch) < max_items and len(self) > 0:
                camera = self._order[self._next % len(self._order)]
                self._next += 1
                queue = self._queues[camera]
                if queue.items:
                    item = queue.items.popleft()
                    queue.bytes -= item.size
                    batch.append(item)
                    self._gauges(camera, queue)
            if batch:
                self._changed.notify_all()
            return batch

    async def close(self) -> None:
        """Refuse new frames and wake everyone waiting; what is buffered can still be taken."""
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    def drain(self) -> list[Outgoing]:
        """Everything still buffered, removed (at shutdown, for counting what is left)."""
        left: list[Outgoing] = []
        for camera, queue in self._queues.items():
            left += queue.items
            queue.items.clear()
            queue.bytes = 0
            self._gauges(camera, queue)
        return left

    @staticmethod
    def _gauges(camera_id: str, queue: _CameraQueue) -> None:
        metrics.BUFFER_FRAMES.labels(camera_id=camera_id).set(len(queue.items))
        metrics.BUFFER_BYTES.labels(camera_id=camera_id).set(queue.bytes)
