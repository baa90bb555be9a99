"""Live streams (RTSP, HTTP, anything FFmpeg reads) and video files, decoded by PyAV.

A reader thread per camera opens the URL with FFmpeg (in PyAV's wheel), decodes every frame (a
compressed stream cannot skip frames) and lets the ``Sampler`` pick the ones that become Frames:
one per ``1/fps`` seconds or one per trigger. Only picked frames are converted to pixels and
encoded (JPEG at ``jpeg_quality`` by default). A live stream that fails or ends is reopened with
backoff up to ``reconnect_max_s``; ``read_timeout_s`` without a packet counts as a failure.

A video file is played once at its own pace (``realtime``), or as fast as it decodes, or in a
``loop``; its camera is finished at the end. ``captured_at`` is the wall clock when the frame was
decoded (live) and the frame ids carry the gateway run's token, so they never repeat.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import av

from services.camera_gateway import metrics
from services.camera_gateway.config import StreamSource as StreamConfig
from services.camera_gateway.core import encode_pixels, picture_frame
from services.camera_gateway.sources.base import ThreadReader
from shared.errors import ImageError
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.camera_gateway.stream")

RECONNECT_INITIAL_S = 0.5
_STREAM_ERRORS = (av.FFmpegError, OSError, EOFError, ValueError)


class StreamReader(ThreadReader[StreamConfig]):
    thread_name = "stream"

    @property
    def url(self) -> str:
        return self.config.url.removeprefix("file://") if self.config.is_file else self.config.url

    def _options(self) -> dict[str, str]:
        options = dict(self.config.options)
        if self.config.url.startswith(("rtsp://", "rtsps://")):
            options.setdefault("rtsp_transport", self.config.rtsp_transport)
        return options

    def _read(self, stop: threading.Event) -> None:
        delay = RECONNECT_INITIAL_S
        while not stop.is_set():
            try:
                finished = self._play(stop)
            except _STREAM_ERRORS as exc:
                delay = self._failed("stream_failed", exc, delay, stop, url=_safe_url(self.config.url))
                continue
            finally:
                metrics.SOURCE_UP.labels(camera_id=self.camera_id).set(0)
            if finished:
                if not stop.is_set():
                    log_event(log, "stream_finished", camera_id=self.camera_id, frames=self.seq)
                return
            delay = RECONNECT_INITIAL_S  # a looping file starts again at once

    def _play(self, stop: threading.Event) -> bool:
        """Read the stream until it ends or ``stop``; True when a video file is done for good."""
        config = self.config
        timeout = (config.open_timeout_s, config.read_timeout_s)
        with av.open(self.url, options=self._options(), timeout=timeout) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            metrics.SOURCE_UP.labels(camera_id=self.camera_id).set(1)
            log_event(
                log,
                "stream_open",
                camera_id=self.camera_id,
                url=_safe_url(config.url),
                codec=stream.codec_context.name,
                width=stream.codec_context.width,
                height=stream.codec_context.height,
            )
            started, first_time = time.monotonic(), None
            for frame in container.decode(stream):
                if stop.is_set():
                    return True
                media_time = frame.time
                if config.is_file and media_time is not None:
                    first_time = media_time if first_time is None else first_time
                    if config.realtime:
                        ahead = started + (media_time - first_time) - time.monotonic()
                        if ahead > 0 and stop.wait(ahead):
                            return True
                at = (
                    media_time
                    if (config.is_file and not config.realtime and media_time is not None)
                    else None
                )
                taken, trigger_value = self.sampler.take(time.monotonic() if at is None else at)
                if taken:
                    self._emit(frame, trigger_value, stop)
        # The end of the input: a live stream is reopened, a file is done unless it loops.
        if config.is_file:
            return not config.loop
        raise EOFError("the stream ended")

    def _emit(self, frame: Any, trigger_value: str | None, stop: threading.Event) -> None:
        captured_at = time.time_ns()
        frame_id = self._next_frame_id()
        encoding: str = self.config.encoding
        try:
            pixels = frame.to_ndarray(format="gray" if encoding == "raw8" else "rgb24")
            image, encoding = encode_pixels(pixels, encoding, self.jpeg_quality)
        except ImageError as exc:
            self.sink.refused(
                frame_id, "too_large" if exc.reason == "too_large" else "encode_error", str(exc)
            )
            return
        attributes = {"source": "stream"}
        if trigger_value is not None:
            attributes["trigger"] = trigger_value
        message = picture_frame(
            self.sink.camera, frame_id, image, encoding, frame.width, frame.height, captured_at, attributes
        )
        self._hand_over(message, stop)


def _safe_url(url: str) -> str:
    """The URL without credentials (rtsp://user:password@host/... is common), for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    host = authority.rpartition("@")[2]
    return f"{scheme}://{host}{slash}{path}"
