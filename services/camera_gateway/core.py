"""The camera gateway's plain logic: image files and decoded pictures become Frames, nothing else.

No Kafka, no event loop, no threads of its own: the sources (``sources/``) and the publisher
(``publisher.py``) call these. What is decided here:

- which bytes of a hot-folder file go on the wire (JPEG/PNG as they are, BMP/TIFF re-encoded as
  PNG), after checking that the file is complete and its declared size within the wire's limits;
- a file's identity and frame id, both derived from the file (name, size, mtime, content), so the
  same file always makes the same frame id, also after a restart;
- how a decoded video frame is encoded (JPEG at a quality, PNG, raw RGB or raw gray);
- which decoded frames of a stream become Frames (``Sampler``: a rate, or one per trigger);
- when a file in a hot folder is fully written (``ReadinessTracker``);
- the ledger records a transaction carries (``ledger_records``), and what a frame over the
  wire's size limit becomes (``LargeFrames``: refused for now; a claim-check store can take
  its place).
"""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from shared.errors import ImageError
from shared.frames_store import ClaimStore
from shared.limits import MAX_DIMENSION, MAX_REFERENCED_PIXELS, TEXT_MAX
from shared.messages.codec import PNG_SIGNATURE
from shared.messages.schemas import CameraLedger, Frame, FrameKeyArgs, LedgerFile

JPEG_SOI = b"\xff\xd8\xff"
JPEG_EOI = b"\xff\xd9"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk with its CRC: a PNG's last 12 bytes
# File formats the hot folder takes (by content, not by name); the last two are re-encoded as PNG.
FILE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF")
STREAM_ENCODINGS = ("jpeg", "png", "raw-rgb", "raw8")
FRAME_ID_HASH_CHARS = 32  # 128 bits of the file identity in its frame id


@dataclass(frozen=True)
class CameraIdentity:
    """Who a frame is from: copied into every Frame the camera makes."""

    camera_id: str
    station_id: str
    line_id: str
    product: str | None = None  # a product class hint for the scorer
    deadline_ms: int | None = None  # the verdict's deadline after capture

    def frame_keys(self, frame_id: str) -> FrameKeyArgs:
        """The ids of this camera's frame ``frame_id``."""
        return FrameKeyArgs(
            frame_id=frame_id, line_id=self.line_id, station_id=self.station_id, camera_id=self.camera_id
        )


# ---- hot-folder files -------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSnapshot:
    """What was read of a file: enough to make its frame and to recognise it again."""

    path: Path
    name: str  # relative to the hot folder
    size: int
    mtime_ns: int
    data: bytes

    @property
    def identity(self) -> str:
        """sha256 over name, size, mtime and content: a rewrite of the same name is another file."""
        digest = hashlib.sha256()
        digest.update(self.name.encode("utf-8", "surrogateescape") + b"\0")
        digest.update(f"{self.size}:{self.mtime_ns}\0".encode())
        digest.update(hashlib.sha256(self.data).digest())
        return digest.hexdigest()


def file_frame_id(camera_id: str, identity: str) -> str:
    """The same file always gets the same frame id."""
    return f"{camera_id}-{identity[:FRAME_ID_HASH_CHARS]}"


def stream_frame_id(camera_id: str, run: str, seq: int) -> str:
    """Frames of a stream: the gateway run's random token keeps ids unique across restarts."""
    return f"{camera_id}-{run}-{seq:09d}"


@dataclass(frozen=True)
class ImageInfo:
    format: str  # one of FILE_FORMATS
    width: int
    height: int


def is_complete(data: bytes) -> bool:
    """Whether an image file's bytes are all there, judged by its format's end marker.

    JPEG must end with its end-of-image marker (some cameras pad with zeros after it) and PNG with
    its IEND chunk. BMP and TIFF have no end marker; they are complete when they decode
    (``read_image_file`` decodes them).
    """
    if data.startswith(JPEG_SOI):
        return data.rstrip(b"\0").endswith(JPEG_EOI)
    if data.startswith(PNG_SIGNATURE):
        return data.endswith(PNG_IEND)
    return True


def image_info(data: bytes) -> ImageInfo:
    """Format and size from the header, before any pixel is decoded; ``ImageError`` if unusable."""
    if not data:
        raise ImageError("empty", "the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                fmt, (width, height) = image.format, image.size
    except Image.DecompressionBombError as exc:
        raise ImageError("too_large", str(exc)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError("corrupt", f"not a readable image ({type(exc).__name__})") from None
    if fmt not in FILE_FORMATS:
        raise ImageError("unsupported_format", f"format {fmt!r} is not JPEG, PNG, BMP or TIFF")
    check_dimensions(width, height)
    return ImageInfo(fmt or "", width, height)


def check_dimensions(width: int, height: int, max_pixels: int = MAX_REFERENCED_PIXELS) -> None:
    """The sizes a Frame may declare (``shared.limits``): per side, and in all. Over ``MAX_PIXELS``
    a frame can only go by claim check (``FrameSink.prepare`` decides)."""
    if width < 1 or height < 1:
        raise ImageError("bad_dimensions", f"image is {width}x{height} pixels")
    if width > MAX_DIMENSION or height > MAX_DIMENSION or width * height > max_pixels:
        raise ImageError(
            "too_large",
            f"image is {width}x{height} pixels; a frame may have {MAX_DIMENSION} per side, "
            f"{max_pixels} in all",
        )


def wire_image(data: bytes, info: ImageInfo) -> tuple[bytes, str]:
    """``(bytes, encoding)`` for the Frame: JPEG and PNG unchanged, BMP/TIFF as lossless PNG."""
    if info.format == "JPEG":
        return data, "jpeg"
    if info.format == "PNG":
        return data, "png"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                keeps_mode = opened.mode in ("1", "L", "LA", "I;16", "RGB", "RGBA", "P")
                image = opened if keeps_mode else opened.convert("RGB")
                out = io.BytesIO()
                image.save(out, format="PNG")
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError("corrupt", f"pixel data cannot be decoded ({type(exc).__name__})") from None
    return out.getvalue(), "png"


def file_frame(camera: CameraIdentity, snapshot: FileSnapshot) -> Frame:
    """The Frame for a complete hot-folder file; ``ImageError`` if the file cannot be one.

    ``captured_at`` is the file's modification time: when the camera wrote it, not when the
    gateway got to it, so a deadline counts from the capture.
    """
    info = image_info(snapshot.data)
    image, encoding = wire_image(snapshot.data, info)
    return Frame(
        **camera.frame_keys(file_frame_id(camera.camera_id, snapshot.identity)),
        captured_at=snapshot.mtime_ns,
        encoding=encoding,
        image=image,
        width=info.width,
        height=info.height,
        product=camera.product,
        deadline_ms=camera.deadline_ms,
        attributes={"source": "folder", "file": snapshot.name[:TEXT_MAX]},
    )


# ---- decoded pictures (streams, plug-in devices) ---------------------------------------------


def encode_pixels(pixels: np.ndarray, encoding: str, jpeg_quality: int) -> tuple[bytes, str]:
    """``(bytes, encoding)`` of an ``HxW`` (gray) or ``HxWx3`` (RGB) uint8 picture."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ImageError(
            "bad_dimensions", f"expected HxW or HxWx3 uint8 pixels, got {pixels.dtype} {pixels.shape}"
        )
    height, width = pixels.shape[:2]
    check_dimensions(width, height)
    if encoding == "raw-rgb":
        rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[:, :, None], 3, axis=2)
        return np.ascontiguousarray(rgb).tobytes(), encoding
    if encoding == "raw8":
        gray = pixels if pixels.ndim == 2 else np.asarray(Image.fromarray(pixels).convert("L"))
        return np.ascontiguousarray(gray).tobytes(), encoding
    image = Image.fromarray(pixels)
    out = io.BytesIO()
    if encoding == "jpeg":
        image.save(out, format="JPEG", quality=jpeg_quality)
    elif encoding == "png":
        image.save(out, format="PNG", compress_level=1)  # fast: the CPU is for scoring
    else:
        raise ImageError(
            "unsupported_format", f"stream encoding {encoding!r} is not one of {STREAM_ENCODINGS}"
        )
    return out.getvalue(), encoding


def picture_frame(
    camera: CameraIdentity,
    frame_id: str,
    image: bytes,
    encoding: str,
    width: int,
    height: int,
    captured_at: int,
    attributes: dict[str, str],
) -> Frame:
    return Frame(
        **camera.frame_keys(frame_id),
        captured_at=captured_at,
        encoding=encoding,
        image=image,
        width=width,
        height=height,
        product=camera.product,
        deadline_ms=camera.deadline_ms,
        attributes=attributes,
    )


class Sampler:
    """Which of a stream's decoded frames become Frames: every frame, one per ``1/fps`` seconds, or
    one per trigger (the first frame that arrives after it).

    Times are seconds on one clock (monotonic arrival for live streams). Thread safe: the stream's
    reader thread calls ``take``, trigger sources call ``trigger`` from the event loop. At most
    ``max_pending`` triggers wait for a frame; more are refused (an overrun: the camera is slower
    than the parts).
    """

    def __init__(self, fps: float | None = None, *, triggered: bool = False, max_pending: int = 64) -> None:
        if fps is not None and fps <= 0:
            raise ValueError("fps must be positive")
        self.period = 1.0 / fps if fps else None
        self.triggered = triggered
        self._next_due: float | None = None
        self._pending: deque[tuple[float, str | None]] = deque()
        self._max_pending = max_pending
        self._lock = threading.Lock()

    def trigger(self, at: float, value: str | None = None) -> bool:
        """Ask for the first frame arriving at or after ``at``; False when too many are waiting."""
        with self._lock:
            if len(self._pending) >= self._max_pending:
                return False
            self._pending.append((at, value))
            return True

    def take(self, t: float) -> tuple[bool, str | None]:
        """Whether the frame arriving at ``t`` is taken, and the trigger's value if one asked for it."""
        with self._lock:
            if self.triggered:
                if self._pending and self._pending[0][0] <= t:
                    return True, self._pending.popleft()[1]
                return False, None
            if self.period is None:
                return True, None
            if self._next_due is None or t >= self._next_due:
                due = (self._next_due or t) + self.period
                # A stalled stream does not make up for lost time with a burst.
                self._next_due = due if due > t else t + self.period
                return True, None
            return False, None


# ---- readiness of hot-folder files -------------------------------------------------------------


@dataclass
class _Candidate:
    size: int
    mtime_ns: int
    changed_at: float  # when this size/mtime was first seen
    closed: bool = False  # the writer closed the file since it last changed (inotify)
    incomplete_since: float | None = None  # read and found incomplete at this size/mtime


@dataclass(frozen=True)
class Readiness:
    ready: list[Path] = field(default_factory=list)  # read them now
    stuck: list[Path] = field(default_factory=list)  # incomplete for too long: refuse them


class ReadinessTracker:
    """When a file in a hot folder is fully written.

    A file is ready when its size and modification time have not changed for ``settle_s`` seconds,
    or at once when the writer closed it (an inotify close-after-write event) since its last change.
    The content then has the final say (``is_complete``); a file that stays incomplete without
    changing for ``incomplete_after_s`` seconds is given up (``stuck``). Times are seconds on one
    clock; ``stat`` returns ``(size, mtime_ns)`` or None when the file is gone.
    """

    def __init__(self, settle_s: float, incomplete_after_s: float) -> None:
        self.settle_s = settle_s
        self.incomplete_after_s = incomplete_after_s
        self._files: dict[Path, _Candidate] = {}

    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, path: Path) -> bool:
        return path in self._files

    def seen(self, path: Path, size: int, mtime_ns: int, now: float, *, closed: bool = False) -> None:
        known = self._files.get(path)
        if known is None or (known.size, known.mtime_ns) != (size, mtime_ns):
            self._files[path] = _Candidate(size, mtime_ns, now, closed)
        elif closed:
            known.closed = True

    def forget(self, path: Path) -> None:
        self._files.pop(path, None)

    def incomplete(self, path: Path, now: float) -> None:
        """``path`` was read at its current size and found incomplete: wait for a change."""
        known = self._files.get(path)
        if known is not None:
            known.closed = False
            if known.incomplete_since is None:
                known.incomplete_since = now

    def poll(self, now: float, stat: Callable[[Path], tuple[int, int] | None]) -> Readiness:
        result = Readiness()
        for path, known in sorted(self._files.items(), key=lambda item: (item[1].mtime_ns, item[0].name)):
            current = stat(path)
            if current is None:
                del self._files[path]
                continue
            if current != (known.size, known.mtime_ns):
                self._files[path] = _Candidate(current[0], current[1], now)
                continue
            if known.incomplete_since is not None:
                if now - known.changed_at >= self.incomplete_after_s:
                    result.stuck.append(path)
                continue
            if known.closed or now - known.changed_at >= self.settle_s:
                result.ready.append(path)
        return result


# ---- what the publisher sends ----------------------------------------------------------------


@dataclass(frozen=True)
class CommittedFile:
    """A hot-folder file inside an outgoing frame: moved or deleted once its frame is committed."""

    folder: Path
    name: str
    identity: str
    size: int
    mtime_ns: int

    @property
    def path(self) -> Path:
        return self.folder / self.name


@dataclass(frozen=True)
class Outgoing:
    """One encoded frame on its way to the ``frames`` topic."""

    camera_id: str
    frame_id: str
    value: bytes  # the encoded Frame
    headers: list[tuple[str, bytes]]
    file: CommittedFile | None = None  # set for hot-folder frames

    @property
    def size(self) -> int:
        return len(self.value)


def ledger_records(batch: Sequence[Outgoing], committed_at: int) -> list[CameraLedger]:
    """One ledger record per camera in a transaction: the hot-folder files it commits.

    Stream cameras get a record too (without files): ``committed_at`` is unique per transaction, so
    after a failure whose outcome is unknown, finding it in the ledger proves the commit.
    """
    files: dict[str, list[LedgerFile]] = {}
    for item in batch:
        entries = files.setdefault(item.camera_id, [])
        if item.file is not None:
            entries.append(
                LedgerFile(name=item.file.name, identity=item.file.identity, frame_id=item.frame_id)
            )
    return [
        CameraLedger(camera_id=camera, files=entries, committed_at=committed_at)
        for camera, entries in files.items()
    ]


def committed_in(batch: Iterable[Outgoing], ledger: dict[str, CameraLedger], committed_at: int) -> bool:
    """Whether the transaction that sent ``batch`` with ``committed_at`` is the one the ledger holds."""
    cameras = {item.camera_id for item in batch}
    return bool(cameras) and all(
        camera in ledger and ledger[camera].committed_at == committed_at for camera in cameras
    )


def transactional_id_for(camera_ids: Iterable[str]) -> str:
    """A gateway's default transactional id: the same cameras, the same id (across restarts and hosts).

    Two gateways started with the same cameras fence each other, which is what should happen: two
    gateways reading one hot folder would send its files twice.
    """
    digest = hashlib.sha256("\0".join(sorted(camera_ids)).encode()).hexdigest()[:16]
    return f"lineguard-camera-gateway-{digest}"


# ---- frames over the wire's size limit --------------------------------------------------------


class LargeFrames(Protocol):
    """What becomes of a frame whose image is over the wire's byte limit.

    The seam for a claim-check store: an implementation writes the image somewhere shared and
    returns a frame that refers to it. Until then the gateway refuses such frames.
    """

    def handle(self, frame: Frame, limit: int) -> Frame | None:
        """The frame to send instead, or None to refuse it."""
        ...


class RefuseLargeFrames:
    """Refuse every frame over the limit (the caller logs and counts it)."""

    def handle(self, frame: Frame, limit: int) -> Frame | None:
        return None


class ClaimCheckLargeFrames:
    """Write every frame over the limit to the claim-check store; the frame sent carries its
    reference (``shared.frames_store``). ``ClaimCheckError`` when the store does not take it."""

    def __init__(self, store: ClaimStore) -> None:
        self.store = store

    def handle(self, frame: Frame, limit: int) -> Frame | None:
        return self.store.claim_check(frame)
