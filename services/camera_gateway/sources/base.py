"""What every source shares: turning a Frame into an outgoing record, and handing it to the buffers.

``FrameSink.prepare`` applies the wire's limits (a frame over the byte limit, or over the wire's
pixel limit, goes to the ``LargeFrames`` policy: refused, or claim-checked when a store is
configured), starts the frame's trace (a ``capture`` span whose
context travels in the record's headers) and encodes it. ``put`` hands the record to the
camera's bounded buffer from the event loop; ``put_from_thread`` does the same from a reader
thread (streams, devices), waiting as the buffer's policy says.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from opentelemetry import trace

from services.camera_gateway import metrics
from services.camera_gateway.buffer import BufferClosed, BufferSet
from services.camera_gateway.core import (
    CameraIdentity,
    CommittedFile,
    LargeFrames,
    Outgoing,
    Sampler,
    stream_frame_id,
)
from shared.errors import ClaimCheckError, MessageError
from shared.frames_store import goes_by_reference
from shared.messages.codec import encode
from shared.telemetry.logging import log_event
from shared.telemetry.tracing import get_tracer, inject_headers, set_messaging_attributes

if TYPE_CHECKING:
    from shared.messages.schemas import Frame

log = logging.getLogger("lineguard.camera_gateway.sources")


class FrameSink:
    def __init__(
        self,
        camera: CameraIdentity,
        buffers: BufferSet,
        max_image_bytes: int,
        large_frames: LargeFrames,
        *,
        frames_topic: str | None = None,  # for the capture span's attributes; None: not known
    ) -> None:
        self.camera = camera
        self.frames_topic = frames_topic
        self.buffers = buffers
        self.max_image_bytes = max_image_bytes
        self.large_frames = large_frames
        self._tracer = get_tracer("lineguard.camera_gateway")

    def prepare(self, frame: Frame, file: CommittedFile | None = None) -> Outgoing | None:
        """The record for ``frame``, or None (logged and counted) if it cannot go on the wire."""
        camera_id = self.camera.camera_id
        size = len(frame.image or b"")
        if goes_by_reference(size, frame.width, frame.height, self.max_image_bytes):
            try:
                handled = self.large_frames.handle(frame, self.max_image_bytes)
            except ClaimCheckError as exc:
                self.refused(frame.frame_id, "claim_check_failed", f"{exc.reason}: {exc.detail}")
                return None
            if handled is None:
                self.refused(
                    frame.frame_id,
                    "too_large",
                    f"{size} bytes ({frame.width}x{frame.height}), over {self.max_image_bytes} bytes "
                    "or the wire's pixel limit, and no claim-check store",
                )
                return None
            frame = handled
        with self._tracer.start_as_current_span("capture", kind=trace.SpanKind.PRODUCER) as span:
            if self.frames_topic is not None:
                set_messaging_attributes(span, "publish", self.frames_topic, key=camera_id.encode())
            span.set_attribute("lineguard.frame_id", frame.frame_id)
            span.set_attribute("lineguard.camera_id", camera_id)
            headers = inject_headers([])
        try:
            value = encode(frame)
        except MessageError as exc:  # over a message limit the image check above does not cover
            self.refused(
                frame.frame_id, "too_large" if exc.reason == "too_large" else "encode_error", str(exc)
            )
            return None
        metrics.FRAMES_CAPTURED.labels(camera_id=camera_id).inc()
        return Outgoing(camera_id, frame.frame_id, value, headers, file)

    def refused(self, frame_id: str, reason: str, detail: str) -> None:
        metrics.dropped(self.camera.camera_id, reason)
        log_event(
            log,
            "frame_refused",
            logging.WARNING,
            camera_id=self.camera.camera_id,
            frame_id=frame_id,
            reason=reason,
            detail=detail,
        )

    async def put(self, item: Outgoing) -> None:
        await self.buffers.put(item)

    def put_from_thread(self, item: Outgoing, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> bool:
        """Buffer ``item`` from a reader thread; False when the gateway is stopping."""
        future = asyncio.run_coroutine_threadsafe(self.buffers.put(item), loop)
        while True:
            try:
                future.result(timeout=0.25)
                return True
            except concurrent.futures.TimeoutError:
                if stop.is_set():
                    future.cancel()
                    return False
            except (BufferClosed, concurrent.futures.CancelledError):
                return False


async def run_in_thread(name: str, target: Callable[[threading.Event], None], stop: asyncio.Event) -> None:
    """Run a blocking reader ``target(thread_stop)`` in its own thread until it returns or ``stop``
    is set (then ``thread_stop`` is set and the reader is awaited); its exception is re-raised."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    thread_stop = threading.Event()

    def finish(error: BaseException | None) -> None:
        if not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    def main() -> None:
        error: BaseException | None = None
        try:
            target(thread_stop)
        except BaseException as exc:  # handed to the event loop, which re-raises it
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(finish, error)

    threading.Thread(target=main, name=name, daemon=True).start()
    stopping = asyncio.ensure_future(stop.wait())
    waited: list[asyncio.Future[Any]] = [done, stopping]
    try:
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
    finally:
        thread_stop.set()
        stopping.cancel()
    await done


class _ReaderConfig(Protocol):
    @property
    def jpeg_quality(self) -> int | None: ...
    @property
    def reconnect_max_s(self) -> float: ...


ConfigT = TypeVar("ConfigT", bound=_ReaderConfig)


class ThreadReader(Generic[ConfigT]):
    """A source read by a worker thread of its own (a stream, a capture device): what both keep,
    and how they run. Subclasses name their thread (``thread_name``) and read in ``_read``."""

    thread_name = "reader"

    def __init__(
        self, config: ConfigT, sink: FrameSink, sampler: Sampler, run_token: str, jpeg_quality: int
    ) -> None:
        self.config = config
        self.sink = sink
        self.sampler = sampler
        self.run_token = run_token
        self.jpeg_quality = config.jpeg_quality or jpeg_quality
        self.camera_id = sink.camera.camera_id
        self.seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        await run_in_thread(f"{self.thread_name}-{self.camera_id}", self._read, stop)

    def _read(self, stop: threading.Event) -> None:
        raise NotImplementedError

    def _failed(
        self, event: str, exc: BaseException, delay: float, stop: threading.Event, **fields: Any
    ) -> float:
        """Count and log a failure of the source, wait ``delay`` (or until ``stop``); the next,
        doubled delay, at most ``reconnect_max_s``."""
        metrics.SOURCE_ERRORS.labels(camera_id=self.camera_id).inc()
        log_event(
            log,
            event,
            logging.WARNING,
            camera_id=self.camera_id,
            **fields,
            error=f"{type(exc).__name__}: {exc}",
            retry_in_s=delay,
        )
        stop.wait(delay)
        return min(delay * 2, self.config.reconnect_max_s)

    def _next_frame_id(self) -> str:
        frame_id = stream_frame_id(self.camera_id, self.run_token, self.seq)
        self.seq += 1
        return frame_id

    def _hand_over(self, frame: Frame, stop: threading.Event) -> None:
        """The frame to the camera's buffer, from this reader's thread (unless it cannot go on the
        wire: then ``prepare`` has refused it)."""
        item = self.sink.prepare(frame)
        if item is None:
            return
        assert self._loop is not None
        if not self.sink.put_from_thread(item, self._loop, stop):
            metrics.dropped(self.camera_id, "shutdown")
