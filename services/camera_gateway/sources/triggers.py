"""Triggers: "take a frame now", from a file that appears or a record on a Kafka topic.

A trigger file is created by the line controller (a PLC gateway, a script) each time a part is in
place; the gateway deletes it and the camera's next decoded frame becomes a Frame. inotify reports
it within milliseconds; a stat every ``FILE_POLL_S`` catches it on filesystems without events.
A file already there at start is stale: it is deleted without triggering.

A trigger topic is any topic the plant already has: a record whose key is the camera id (or that
has no key: every camera on that topic) triggers the camera; a short UTF-8 value (a part id, up
to 256 characters) is copied into the frame's ``trigger`` attribute. Read from the end (only new
triggers count), by one consumer per topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from services.camera_gateway import metrics
from services.camera_gateway.core import Sampler
from services.camera_gateway.sources.watching import observing, wake_or_tick
from shared.kafka.client import make_consumer
from shared.settings import Settings
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.camera_gateway.triggers")

FILE_POLL_S = 0.25
MAX_TRIGGER_VALUE = 256


def fire(camera_id: str, sampler: Sampler, value: str | None = None) -> None:
    accepted = sampler.trigger(time.monotonic(), value)
    metrics.TRIGGERS.labels(camera_id=camera_id, outcome="accepted" if accepted else "overrun").inc()
    if not accepted:
        log_event(log, "trigger_overrun", logging.WARNING, camera_id=camera_id)


class TriggerFile:
    def __init__(self, path: Path, camera_id: str, sampler: Sampler) -> None:
        self.path = path
        self.camera_id = camera_id
        self.sampler = sampler
        self._wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._consume():
            log_event(log, "stale_trigger_removed", camera_id=self.camera_id, file=str(self.path))
        loop = asyncio.get_running_loop()
        observer = Observer()
        observer.schedule(_Wake(self.path, loop, self._wake), str(self.path.parent), recursive=False)
        async with observing(observer):
            while not stop.is_set():
                if self._consume():
                    fire(self.camera_id, self.sampler)
                await wake_or_tick(self._wake, FILE_POLL_S)

    def _consume(self) -> bool:
        """Delete the trigger file; True if it was there."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


class _Wake(FileSystemEventHandler):
    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        super().__init__()
        self.path, self.loop, self.wake = path, loop, wake

    def dispatch(self, event: FileSystemEvent) -> None:
        names = {str(event.src_path), str(getattr(event, "dest_path", "") or "")}
        if str(self.path) in names:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.wake.set)


class TriggerTopic:
    """One consumer of a trigger topic for every camera triggered by it."""

    def __init__(self, settings: Settings, topic: str, samplers: Mapping[str, Sampler]) -> None:
        self.settings = settings
        self.topic = topic
        self.samplers = dict(samplers)
        self.ready = asyncio.Event()  # set once the consumer sits at the end of the topic

    async def run(self, stop: asyncio.Event) -> None:
        consumer = make_consumer(
            self.settings,
            self.topic,
            group_id=None,
            auto_offset_reset="latest",
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            while not consumer.assignment() and not stop.is_set():
                await asyncio.sleep(0.05)
            for partition in consumer.assignment():
                await consumer.position(partition)  # resolves "latest" now, so later records count
            self.ready.set()
            log_event(log, "trigger_topic_ready", topic=self.topic, cameras=sorted(self.samplers))
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        self._dispatch(record.key, record.value)
        finally:
            await consumer.stop()

    def _dispatch(self, key: bytes | None, value: bytes | None) -> None:
        text = _trigger_value(value)
        targets: Sequence[str]
        if key is None:
            targets = list(self.samplers)
        else:
            camera_id = key.decode("utf-8", "replace")
            targets = [camera_id] if camera_id in self.samplers else []
        for camera_id in targets:
            fire(camera_id, self.samplers[camera_id], text)


def _trigger_value(value: bytes | None) -> str | None:
    """A short printable UTF-8 value (a part id) or None."""
    if not value or len(value) > MAX_TRIGGER_VALUE:
        return None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None
