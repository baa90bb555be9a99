"""What every source shares: turning a Frame into an outgoing record, and handing it to the buffers.

``FrameSink.prepare`` applies the wire's limits (a frame over the byte limit goes to the
``LargeFrames`` policy: refused for now), starts the frame's trace (a ``capture`` span whose
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
from typing import TYPE_CHECKING, Any

from services.camera_gateway import metrics
from services.camera_gateway.buffer import BufferClosed, BufferSet
from services.camera_gateway.core import CameraIdentity, CommittedFile, LargeFrames, Outgoing
from shared.errors import MessageError
from shared.messages.codec import encode
from shared.telemetry.logging import log_event
from shared.telemetry.tracing import get_tracer, inject_headers

if TYPE_CHECKING:
    from shared.messages.schemas import Frame

log = logging.getLogger("lineguard.camera_gateway.sources")


class FrameSink:
    def __init__(
        self, camera: CameraIdentity, buffers: BufferSet, max_image_bytes: int, large_frames: LargeFrames
    ) -> None:
        self.camera = camera
        self.buffers = buffers
        self.max_image_bytes = max_image_bytes
        self.large_frames = large_frames
        self._tracer = get_tracer("lineguard.camera_gateway")

    def prepare(self, frame: Frame, file: CommittedFile | None = None) -> Outgoing | None:
        """The record for ``frame``, or None (logged and counted) if it cannot go on the wire."""
        camera_id = self.camera.camera_id
        if len(frame.image) > self.max_image_bytes:
            handled = self.large_frames.handle(frame, self.max_image_bytes)
            if handled is None:
                self.refused(
                    frame.frame_id, "too_large", f"{len(frame.image)} bytes, over {self.max_image_bytes}"
                )
                return None
            frame = handled
        with self._tracer.start_as_current_span("capture") as span:
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
