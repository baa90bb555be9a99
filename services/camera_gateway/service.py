"""The camera gateway's async shell: cameras -> bounded buffers -> transactional publisher -> Kafka.

Start-up: fence the previous producer and read the ledger (retrying while Kafka is unreachable),
move away hot-folder files the ledger says were sent, then start every source and the publisher.
Shutdown (SIGTERM, or every source finished, as with video files): sources stop, what is buffered
is published for up to ``drain_timeout_s``, then the producer closes. A failing source or
publisher stops the gateway with its error; the ledger makes the restart safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from services.camera_gateway import metrics
from services.camera_gateway.buffer import BufferSet
from services.camera_gateway.config import CameraConfig, GatewayConfig, Trigger
from services.camera_gateway.core import (
    ClaimCheckLargeFrames,
    LargeFrames,
    Outgoing,
    RefuseLargeFrames,
    Sampler,
    transactional_id_for,
)
from services.camera_gateway.publisher import Publisher, StageObserver
from services.camera_gateway.sources.base import FrameSink
from shared.errors import ConfigError
from shared.frames_store import ClaimStore
from shared.settings import OverflowPolicy, Settings
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.camera_gateway")

DROP_LOG_INTERVAL_S = 10.0  # buffer drops are logged at most this often per camera (all are counted)


class _Runnable(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...


@dataclass
class GatewayStats:
    sent: int = 0  # frames committed
    reconciled: int = 0  # files found sent already at start, moved away without sending


class Gateway:
    """Every configured camera with its source, buffer and triggers, and the one publisher."""

    def __init__(
        self,
        settings: Settings,
        config: GatewayConfig,
        *,
        observer: StageObserver | None = None,
        large_frames: LargeFrames | None = None,
    ) -> None:
        from services.camera_gateway.sources.folder import HotFolder

        self.settings = settings
        self.config = config
        gateway = settings.camera_gateway
        self.run_token = uuid.uuid4().hex[:8]
        self.buffers = BufferSet(on_drop=self._dropped)
        self.folders: dict[str, HotFolder] = {}
        self.readers: list[_Runnable] = []
        self.triggers: list[_Runnable] = []
        self._topic_samplers: dict[str, dict[str, Sampler]] = defaultdict(dict)
        self._drops: dict[str, tuple[float, int]] = {}
        # Frames over the limit go by claim check when a store is configured, else are refused.
        claims = ClaimStore.from_settings(settings)
        inline_max = gateway.max_image_bytes
        if large_frames is None and claims is not None:
            large_frames = ClaimCheckLargeFrames(claims)
            inline_max = min(inline_max, settings.claim_check.inline_max_bytes)
        large_frames = large_frames or RefuseLargeFrames()
        for camera in config.cameras:
            sink = FrameSink(
                camera.identity(gateway.line_id),
                self.buffers,
                inline_max,
                large_frames,
                frames_topic=settings.topic("frames"),
            )
            if camera.folder is not None:
                policy = OverflowPolicy.BLOCK  # the folder is the buffer
                self.folders[camera.camera_id] = HotFolder(camera.folder, sink)
            else:
                policy = camera.overflow or gateway.overflow
                self.readers.append(self._reader(camera, sink))
            self.buffers.add_camera(camera.camera_id, gateway.buffer_frames, gateway.buffer_bytes, policy)
        for topic, samplers in self._topic_samplers.items():
            from services.camera_gateway.sources.triggers import TriggerTopic

            self.triggers.append(TriggerTopic(settings, topic, samplers))
        self.transactional_id = gateway.transactional_id or transactional_id_for(config.camera_ids)
        self.publisher = Publisher(
            settings, self.transactional_id, config.camera_ids, self.buffers, self._dispose, observer
        )

    def _reader(self, camera: CameraConfig, sink: FrameSink) -> _Runnable:
        quality = self.settings.camera_gateway.jpeg_quality
        if camera.stream is not None:
            from services.camera_gateway.sources.stream import StreamReader

            trigger = camera.stream.trigger
            fps = camera.stream.fps or (None if trigger else 1.0)
            sampler = self._sampler(camera.camera_id, fps, trigger)
            reader = StreamReader(camera.stream, sink, sampler, self.run_token, quality)
            if camera.stream.is_file and not Path(reader.url).is_file():
                raise ConfigError(f"camera {camera.camera_id}: video file {reader.url} does not exist")
            return reader
        assert camera.device is not None
        from services.camera_gateway.sources.device import DeviceReader

        sampler = self._sampler(camera.camera_id, camera.device.fps, camera.device.trigger)
        return DeviceReader(camera.device, sink, sampler, self.run_token, quality)

    def _sampler(self, camera_id: str, fps: float | None, trigger: Trigger | None) -> Sampler:
        sampler = Sampler(fps, triggered=trigger is not None)
        if trigger is not None and trigger.file is not None:
            from services.camera_gateway.sources.triggers import TriggerFile

            self.triggers.append(TriggerFile(trigger.file, camera_id, sampler))
        elif trigger is not None and trigger.topic is not None:
            self._topic_samplers[trigger.topic][camera_id] = sampler
        return sampler

    async def run(self, stop: asyncio.Event) -> GatewayStats:
        stats = GatewayStats()
        metrics.prepare(self.config.camera_ids)
        ledger = await self.publisher.start(stop)
        if ledger is None:
            return stats
        for camera_id, folder in self.folders.items():
            stats.reconciled += await folder.reconcile(ledger.get(camera_id))
        source_stop, hard_stop = asyncio.Event(), asyncio.Event()
        publishing = asyncio.create_task(self.publisher.run(hard_stop))
        sources = {asyncio.create_task(r.run(source_stop)) for r in [*self.folders.values(), *self.readers]}
        triggers = {asyncio.create_task(t.run(source_stop)) for t in self.triggers}
        waiter = asyncio.create_task(stop.wait())
        log_event(
            log,
            "gateway_started",
            cameras=self.config.camera_ids,
            transactional_id=self.transactional_id,
            reconciled_files=stats.reconciled,
        )
        error: BaseException | None = None
        running = set(sources)
        try:
            while True:
                done, _ = await asyncio.wait(
                    {waiter, publishing, *running, *triggers}, return_when=asyncio.FIRST_COMPLETED
                )
                failed = [t for t in done if t is not waiter and not t.cancelled() and t.exception()]
                if failed:
                    error = failed[0].exception()
                    break
                running -= done
                if waiter in done or publishing in done or not running:
                    break  # stopped, or every source is finished (video files)
        finally:
            waiter.cancel()
            source_stop.set()
            outcomes = await asyncio.gather(*sources, *triggers, return_exceptions=True)
            error = error or next((o for o in outcomes if isinstance(o, BaseException)), None)
            await self._drain(publishing, hard_stop)
            await self.publisher.stop()
        stats.sent = self.publisher.sent
        log_event(log, "gateway_stopped", sent=stats.sent, error=repr(error) if error else None)
        if error is not None:
            raise error
        return stats

    async def _drain(self, publishing: asyncio.Task[None], hard_stop: asyncio.Event) -> None:
        """Publish what is buffered, for up to ``drain_timeout_s``; count what is left."""
        await self.buffers.close()
        timeout = self.settings.camera_gateway.drain_timeout_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(publishing), timeout)
        if not publishing.done():
            hard_stop.set()  # stop retrying; a transaction under way may still finish
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(publishing), 2.0)
        if not publishing.done():
            publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing  # re-raises the publisher's error, if any
        for item in self.buffers.drain():
            if item.file is None:  # files stay in their folder and are sent after the restart
                metrics.dropped(item.camera_id, "shutdown")

    async def _dispose(self, items: Sequence[Outgoing]) -> None:
        by_camera: dict[str, list[Outgoing]] = defaultdict(list)
        for item in items:
            by_camera[item.camera_id].append(item)
        for camera_id, files in by_camera.items():
            await self.folders[camera_id].dispose(files)

    def _dropped(self, item: Outgoing, reason: str) -> None:
        """Log buffer drops at most every ``DROP_LOG_INTERVAL_S`` per camera, with the count since."""
        now = time.monotonic()
        last, count = self._drops.get(item.camera_id, (0.0, 0))
        count += 1
        if now - last >= DROP_LOG_INTERVAL_S:
            log_event(
                log, "frames_dropped", logging.WARNING, camera_id=item.camera_id, reason=reason, frames=count
            )
            self._drops[item.camera_id] = (now, 0)
        else:
            self._drops[item.camera_id] = (last, count)


async def run_camera_gateway(
    settings: Settings,
    config: GatewayConfig,
    stop: asyncio.Event | None = None,
    **options: Any,
) -> GatewayStats:
    """Run the gateway until ``stop`` is set (or every source is finished)."""
    return await Gateway(settings, config, **options).run(stop or asyncio.Event())
