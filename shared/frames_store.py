"""The frames store: a frame's pixels on disk by frame id, ``<root>/<name>.png``.

Topics keep frames for an hour (``frames``) or three days (``defects``); a labelled set is built
later. The console saves here the frame of every judgement it has the image of, and
``lineguard labels export`` looks here first (``LINEGUARD_LABELS__FRAMES_DIR``). Frame ids come off
the wire, so a file name is the id only when that is harmless; otherwise safe characters plus a hash
of the id, so distinct ids never share a file.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from shared.engine.images import decode_image
from shared.limits import MAX_FILE_BYTES, MAX_PIXELS

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def frame_file_stem(frame_id: str) -> str:
    """A file name (without suffix) for a frame id from the wire."""
    if _SAFE.match(frame_id) and not frame_id.endswith("."):
        return frame_id
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", frame_id)[:60].strip(".") or "frame"
    digest = hashlib.sha256(frame_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{cleaned}-{digest}"


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_atomically(path: Path, data: bytes) -> None:
    """Write under a temporary name and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class FrameStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, frame_id: str) -> Path:
        return self.root / f"{frame_file_stem(frame_id)}.png"

    def save(self, frame_id: str, pixels: np.ndarray) -> Path:
        """The frame (``HxWx3 uint8``) as a PNG, written atomically; returns its path."""
        path = self.path(frame_id)
        write_atomically(path, png_bytes(pixels))
        return path

    def load(self, frame_id: str, *, max_pixels: int = MAX_PIXELS) -> np.ndarray | None:
        """The stored frame as ``HxWx3 uint8``, or None when the store does not hold it. A file is
        decoded with the same bounds as any image (``ImageError`` when it is not one)."""
        path = self.path(frame_id)
        if not path.is_file():
            return None
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        return decode_image(data, max_bytes=MAX_FILE_BYTES, max_pixels=max_pixels)
