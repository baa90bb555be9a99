"""The extension point for capture devices the gateway does not ship: GenICam/GigE Vision and USB3
Vision cameras (through ``harvesters`` and the camera vendor's GenTL producer), frame grabbers,
vendor SDKs.

A device is a class with three methods (``CaptureDevice``), made by a factory named in the camera's
configuration (``device: {factory: "package.module:callable", options: {...}}``); the factory is
called with ``options`` as keyword arguments. The gateway runs the device in its own thread:
``open()`` once, ``grab(timeout_s)`` in a loop, ``close()`` at the end or after a failure (then it
opens the device again with backoff). Each grabbed ``Capture`` goes through the camera's sampler
(every capture by default, or ``fps``, or a trigger) and becomes a Frame like a stream's.

docs/operations.md ("Connect your cameras", GenICam) shows a device for harvesters.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from services.camera_gateway import metrics
from services.camera_gateway.config import DeviceSource as DeviceConfig
from services.camera_gateway.core import (
    Sampler,
    check_dimensions,
    encode_pixels,
    image_info,
    picture_frame,
)
from services.camera_gateway.sources.base import FrameSink, ThreadReader
from shared.errors import ConfigError, ImageError
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.camera_gateway.device")

RECONNECT_INITIAL_S = 0.5


@dataclass
class Capture:
    """One picture from a device: pixels, or an image the device encoded itself (JPEG/PNG)."""

    pixels: np.ndarray | None = None  # HxW (mono) or HxWx3 (RGB), uint8
    image: bytes | None = None  # JPEG or PNG bytes, sent as they are
    captured_at: int | None = None  # ns since the epoch (the device's timestamp); None: now
    attributes: dict[str, str] = field(default_factory=dict)  # e.g. the device's frame counter


@runtime_checkable
class CaptureDevice(Protocol):
    def open(self) -> None:
        """Connect and start acquisition. Raise on failure; the gateway retries."""

    def grab(self, timeout_s: float) -> Capture | None:
        """The next picture, waiting at most ``timeout_s``; None if none came (not an error)."""

    def close(self) -> None:
        """Stop acquisition and release the device. Must not raise."""


def load_factory(spec: str) -> Callable[..., CaptureDevice]:
    """The callable named by ``"package.module:callable"``; a ``ConfigError`` if there is none."""
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"device factory {spec}: cannot import {module_name} ({exc})") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError(f"device factory {spec}: {module_name} has no callable {name}")
    return factory


class DeviceReader(ThreadReader[DeviceConfig]):
    thread_name = "device"

    def __init__(
        self,
        config: DeviceConfig,
        sink: FrameSink,
        sampler: Sampler,
        run_token: str,
        jpeg_quality: int,
        factory: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(config, sink, sampler, run_token, jpeg_quality)
        self.factory = factory or load_factory(config.factory)

    def _read(self, stop: threading.Event) -> None:
        delay = RECONNECT_INITIAL_S
        while not stop.is_set():
            device: Any = None
            try:
                device = self.factory(**self.config.options)
                if not isinstance(device, CaptureDevice):
                    raise ConfigError(
                        f"device factory {self.config.factory} made {type(device).__name__}, "
                        "which lacks open/grab/close"
                    )
                device.open()
                metrics.SOURCE_UP.labels(camera_id=self.camera_id).set(1)
                log_event(log, "device_open", camera_id=self.camera_id, factory=self.config.factory)
                delay = RECONNECT_INITIAL_S
                while not stop.is_set():
                    capture = device.grab(self.config.grab_timeout_s)
                    if capture is not None:
                        taken, trigger_value = self.sampler.take(time.monotonic())
                        if taken:
                            self._emit(capture, trigger_value, stop)
            except ConfigError:
                raise
            except Exception as exc:
                delay = self._failed("device_failed", exc, delay, stop)
            finally:
                metrics.SOURCE_UP.labels(camera_id=self.camera_id).set(0)
                if device is not None:
                    try:
                        device.close()
                    except Exception as exc:
                        log_event(
                            log,
                            "device_close_failed",
                            logging.WARNING,
                            camera_id=self.camera_id,
                            error=f"{type(exc).__name__}: {exc}",
                        )

    def _emit(self, capture: Capture, trigger_value: str | None, stop: threading.Event) -> None:
        frame_id = self._next_frame_id()
        try:
            if capture.image is not None:
                info = image_info(capture.image)
                if info.format not in ("JPEG", "PNG"):
                    raise ImageError(
                        "unsupported_format", f"a device image must be JPEG or PNG, not {info.format}"
                    )
                image, encoding = capture.image, info.format.lower()
                width, height = info.width, info.height
            elif capture.pixels is not None:
                height, width = capture.pixels.shape[:2]
                check_dimensions(width, height)
                image, encoding = encode_pixels(capture.pixels, self.config.encoding, self.jpeg_quality)
            else:
                raise ImageError("empty", "the capture has neither pixels nor an image")
        except ImageError as exc:
            self.sink.refused(
                frame_id, "too_large" if exc.reason == "too_large" else "encode_error", str(exc)
            )
            return
        attributes = {"source": "device", **capture.attributes}
        if trigger_value is not None:
            attributes["trigger"] = trigger_value
        captured_at = capture.captured_at if capture.captured_at is not None else time.time_ns()
        message = picture_frame(
            self.sink.camera, frame_id, image, encoding, width, height, captured_at, attributes
        )
        self._hand_over(message, stop)
