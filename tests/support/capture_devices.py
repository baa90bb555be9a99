"""Capture devices for the gateway's plug-in tests: real implementations of ``CaptureDevice`` that
make their pictures themselves (like a machine-vision camera's built-in test pattern), so the
extension point is exercised end to end without camera hardware."""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

from services.camera_gateway.sources.device import Capture

OPENED: list[str] = []  # names of devices opened, in order (a test reads it)


class PatternDevice:
    """A moving gradient, ``width`` x ``height``, mono or RGB, ``rate`` pictures per second.

    ``fail_every``: every n-th grab raises, as a camera that drops off the network would.
    ``encoded``: deliver JPEG bytes instead of pixels (cameras with on-board compression).
    """

    def __init__(
        self, name: str, width: int = 64, height: int = 48, rate: float = 50.0, mono: bool = False,
        fail_every: int = 0, encoded: bool = False,
    ) -> None:  # fmt: skip
        self.name, self.width, self.height, self.rate = name, width, height, rate
        self.mono, self.fail_every, self.encoded = mono, fail_every, encoded
        self.count = 0
        self.is_open = False

    def open(self) -> None:
        OPENED.append(self.name)
        self.is_open = True

    def grab(self, timeout_s: float) -> Capture | None:
        assert self.is_open, "grab before open"
        time.sleep(min(timeout_s, 1.0 / self.rate))
        self.count += 1
        if self.fail_every and self.count % self.fail_every == 0:
            raise ConnectionError(f"{self.name}: lost the camera")
        ramp = (np.arange(self.width, dtype=np.uint16)[None, :] + self.count) % 256
        gray = np.repeat(ramp, self.height, axis=0).astype(np.uint8)
        pixels = gray if self.mono else np.stack([gray, gray[::-1], 255 - gray], axis=2)
        attributes = {"device_frame": str(self.count)}
        if self.encoded:
            out = io.BytesIO()
            Image.fromarray(pixels).save(out, format="JPEG", quality=90)
            return Capture(image=out.getvalue(), captured_at=time.time_ns(), attributes=attributes)
        return Capture(pixels=pixels, captured_at=time.time_ns(), attributes=attributes)

    def close(self) -> None:
        self.is_open = False


def not_a_device(**options: object) -> object:
    return object()
