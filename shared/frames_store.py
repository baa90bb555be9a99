"""The frames stores: frame images kept outside Kafka.

``FrameStore``: judged frames on disk by frame id, ``<root>/<name>.png``. Topics keep frames for an
hour (``frames``) or three days (``defects``); a labelled set is built later. The console saves here
the frame of every judgement it has the image of, and ``lineguard labels export`` looks here first
(``LINEGUARD_LABELS__FRAMES_DIR``). Kept until removed by hand: they are the plant's labelled data.

``ClaimStore``: claim checks, the bytes of frames too large for the wire, behind fsspec. Its root is
a URL (``LINEGUARD_CLAIM_CHECK__URL``): a folder, local or a network mount (the same path on every
host), ``file://...``, or an object store through its fsspec plug-in (``s3://bucket/prefix`` with
``s3fs`` installed, ``LINEGUARD_CLAIM_CHECK__OPTIONS`` for its storage options). Objects are
``<root>/claims/<YYYY-MM-DD>/<HH>/<frame>-<sha256 prefix>.<jpg|png|raw>``, exactly the bytes the
camera gave. The wire carries a ``FrameRef`` (URL, size, sha256) instead, and every reader goes
through ``fetch``: the reference must name an object of this store's ``claims/`` folder (nothing
else: no other scheme, bucket or folder, no ``..``), its declared size must be within the reader's
limit before anything is read, at most that many bytes (plus one) are read, once, and they are
returned only when they are exactly the declared size with the declared sha256. The readers decode
those bytes, never a second read. The hour folders (UTC, when the frame was written) are the unit
of retention: ``collect_garbage`` deletes every hour that ended more than the retention ago.

Frame ids come off the wire, so a file name is the id only when that is harmless; otherwise safe
characters plus a hash of the id, so distinct ids never share a file.
"""

from __future__ import annotations

import calendar
import hashlib
import io
import logging
import os
import re
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from shared.engine.images import decode_image
from shared.errors import ClaimCheckError, ConfigError, ImageError
from shared.limits import MAX_FILE_BYTES, MAX_PIXELS, MAX_REFERENCED_PIXELS
from shared.messages.pixels import RAW_CHANNELS, decode_pixels
from shared.messages.schemas import DefectEvent, Frame, FrameRef

log = logging.getLogger("lineguard.frames_store")

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
CLAIMS = "claims"
SUFFIXES = {"jpeg": ".jpg", "png": ".png", "raw8": ".raw", "raw-rgb": ".raw"}
_DIGEST_CHARS = 16  # of the sha256 in a claim check's name: two writes of one frame id never collide
# What a claim check's key may be, and nothing else: day and hour folders, a name of safe characters
# ending in the digest and a known suffix (so never "." or "..", never another folder).
_CLAIM_KEY = re.compile(r"(\d{4}-\d{2}-\d{2})/(\d{2})/[A-Za-z0-9._-]{1,128}-[0-9a-f]{16}\.(?:jpg|png|raw)")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_HOUR = re.compile(r"\d{2}")
_RETRY_DELAY_S = 0.05  # first wait before reading again after the store failed to answer


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


def goes_by_reference(
    image_bytes: int, width: int | None, height: int | None, claim_check_bytes: int
) -> bool:
    """Whether an image travels as a claim check: more bytes than ``claim_check_bytes``, or more
    pixels than a frame on the wire may have (``MAX_PIXELS``)."""
    return image_bytes > claim_check_bytes or (width or 0) * (height or 0) > MAX_PIXELS


def image_size(data: bytes, encoding: str) -> tuple[int, int]:
    """``(width, height)`` of a JPEG or PNG from its header, before any pixel is decoded."""
    if encoding in RAW_CHANNELS:
        raise ImageError("bad_dimensions", f"{encoding} images carry no header: give width and height")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError as exc:
        raise ImageError("too_large", str(exc)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError("corrupt", f"not a readable image ({type(exc).__name__})") from None


@dataclass(frozen=True)
class GarbageCollected:
    """What ``collect_garbage`` removed (or would remove, on a dry run)."""

    hours: list[str]  # the hour folders, "YYYY-MM-DD/HH"
    objects: int
    bytes: int


class ClaimStore:
    """The claim checks at a root URL (see the module's text)."""

    def __init__(
        self,
        url: str | Path,
        *,
        options: Mapping[str, Any] | None = None,
        max_frame_bytes: int = MAX_FILE_BYTES,
        max_frame_pixels: int = MAX_REFERENCED_PIXELS,
        fetch_attempts: int = 3,
    ) -> None:
        import fsspec.core
        from fsspec.implementations.local import LocalFileSystem

        text = str(url).strip()
        if not text or "::" in text:
            raise ConfigError(f"frames store URL {text!r}: give one folder or URL (no chained protocols)")
        try:
            self.fs, root = fsspec.core.url_to_fs(text, **dict(options or {}))
        except (ImportError, ValueError) as exc:  # an unknown protocol, or its plug-in not installed
            raise ConfigError(f"frames store URL {text!r}: {exc}") from None
        self.root = root.rstrip("/")
        if not self.root:
            raise ConfigError(f"frames store URL {text!r}: give a folder, not the filesystem's root")
        self.url = self.fs.unstrip_protocol(self.root).rstrip("/")  # what references begin with
        self.local = isinstance(self.fs, LocalFileSystem)
        self.max_frame_bytes = min(max_frame_bytes, MAX_FILE_BYTES)
        self.max_frame_pixels = min(max_frame_pixels, MAX_REFERENCED_PIXELS)
        self.fetch_attempts = max(1, fetch_attempts)

    @classmethod
    def from_settings(cls, settings: Any) -> ClaimStore | None:
        """The store ``settings.claim_check`` configures, or None when it names none."""
        cfg = settings.claim_check
        if not cfg.url:
            return None
        return cls(
            cfg.url,
            options=cfg.options,
            max_frame_bytes=cfg.max_frame_bytes,
            max_frame_pixels=cfg.max_frame_pixels,
            fetch_attempts=cfg.fetch_attempts,
        )

    def __repr__(self) -> str:
        return f"ClaimStore({self.url!r})"  # never the storage options: they may hold credentials

    def claim_check(self, frame: Frame, *, now: float | None = None) -> Frame:
        """``frame`` with its image written to the store and a reference in its place; its width
        and height are read from the image's header when the frame does not declare them."""
        image = frame.image
        if image is None:
            return frame
        width, height = frame.width, frame.height
        if width is None or height is None:
            width, height = image_size(image, frame.encoding)
        if width * height > self.max_frame_pixels:
            raise ClaimCheckError(
                "too_large", f"{width}x{height} is over the store's {self.max_frame_pixels} pixels"
            )
        ref = self.put(frame.frame_id, image, frame.encoding, now=now)
        return replace(frame, image=None, image_ref=ref, width=width, height=height)

    def put(self, frame_id: str, data: bytes, encoding: str, *, now: float | None = None) -> FrameRef:
        """Write a frame's bytes as a claim check (whole or not at all); its reference."""
        if not data:
            raise ClaimCheckError("empty", "no image bytes")
        if len(data) > self.max_frame_bytes:
            raise ClaimCheckError("too_large", f"{len(data)} bytes, over the store's {self.max_frame_bytes}")
        digest = hashlib.sha256(data).hexdigest()
        stamp = time.gmtime(time.time() if now is None else now)
        name = f"{frame_file_stem(frame_id)[:128]}-{digest[:_DIGEST_CHARS]}{SUFFIXES.get(encoding, '.raw')}"
        key = f"{CLAIMS}/{time.strftime('%Y-%m-%d/%H', stamp)}/{name}"
        self._write(f"{self.root}/{key}", data)
        return FrameRef(uri=f"{self.url}/{key}", size=len(data), sha256=digest)

    def path_of(self, ref: FrameRef) -> str:
        """The store path a reference names; ``ClaimCheckError`` (``ref_outside_store``) for a
        reference to anything but a claim check of this store."""
        prefix = f"{self.url}/{CLAIMS}/"
        key = ref.uri[len(prefix) :] if ref.uri.startswith(prefix) else ""
        if not _CLAIM_KEY.fullmatch(key):
            raise ClaimCheckError(
                "ref_outside_store", "the reference names no claim check of this frames store"
            )
        path = f"{self.root}/{CLAIMS}/{key}"
        if self.local:  # a link planted in the folder must not lead a reader out of it
            claims = os.path.realpath(f"{self.root}/{CLAIMS}")
            if not os.path.realpath(path).startswith(claims + os.sep):
                raise ClaimCheckError("ref_outside_store", "the claim check links outside the frames store")
        return path

    def fetch(self, ref: FrameRef, *, max_bytes: int | None = None) -> bytes:
        """The referenced bytes, read once and verified (see the module's text)."""
        limit = self.max_frame_bytes if max_bytes is None else min(max_bytes, self.max_frame_bytes)
        if ref.size > limit:
            raise ClaimCheckError("too_large", f"the reference declares {ref.size} bytes, over {limit}")
        path = self.path_of(ref)
        data = self._read(path, ref.size + 1)
        if len(data) != ref.size:
            found = f"more than {ref.size}" if len(data) > ref.size else str(len(data))
            raise ClaimCheckError(
                "frame_size_mismatch", f"the stored frame has {found} bytes, not {ref.size}"
            )
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ClaimCheckError("frame_hash_mismatch", "the stored frame's sha256 is not the reference's")
        return data

    def collect_garbage(
        self, older_than_s: float, *, now: float | None = None, dry_run: bool = False
    ) -> GarbageCollected:
        """Delete every hour folder of claim checks that ended more than ``older_than_s`` ago.

        Only folders named as this store names them are touched; anything else under ``claims/``
        is left alone.
        """
        cutoff = (time.time() if now is None else now) - older_than_s
        hours: list[str] = []
        objects = size = 0
        for day in self._names(f"{self.root}/{CLAIMS}"):
            if not _DAY.fullmatch(day):
                continue
            day_path = f"{self.root}/{CLAIMS}/{day}"
            left = 0
            for hour in self._names(day_path):
                start = _hour_start(day, hour) if _HOUR.fullmatch(hour) else None
                if start is None or start + 3600 > cutoff:
                    left += 1
                    continue
                hour_path = f"{day_path}/{hour}"
                found = self.fs.find(hour_path, detail=True)
                objects += len(found)
                size += sum(int(info.get("size") or 0) for info in found.values())
                hours.append(f"{day}/{hour}")
                if not dry_run:
                    self.fs.rm(hour_path, recursive=True)
            if not left and not dry_run and self.local:
                self.fs.rm(day_path, recursive=True)  # object stores have no empty folders to remove
        return GarbageCollected(hours, objects, size)

    # ---- bytes in and out ----------------------------------------------------------------------

    def _write(self, path: str, data: bytes) -> None:
        try:
            if self.local:
                write_atomically(Path(path), data)
            else:
                self.fs.pipe_file(path, data)  # an object store publishes an object whole
        except OSError as exc:
            raise ClaimCheckError(
                "store_unavailable", f"writing to the frames store failed ({exc})"
            ) from None

    def _read(self, path: str, at_most: int) -> bytes:
        """At most ``at_most`` bytes of ``path``; a store that fails to answer is asked again
        (``fetch_attempts`` in all), a missing object is not."""
        delay = _RETRY_DELAY_S
        for attempt in range(1, self.fetch_attempts + 1):
            try:
                data: bytes = self.fs.cat_file(path, start=0, end=at_most)
                return data
            except FileNotFoundError:
                raise ClaimCheckError("frame_missing", "the frames store does not hold the frame") from None
            except (IsADirectoryError, NotADirectoryError):
                raise ClaimCheckError("frame_missing", "the frames store holds no file there") from None
            except OSError as exc:
                if attempt == self.fetch_attempts:
                    raise ClaimCheckError(
                        "store_unavailable", f"reading the frames store failed {attempt} times ({exc})"
                    ) from None
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _names(self, path: str) -> list[str]:
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries)


def _hour_start(day: str, hour: str) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(f"{day} {hour}", "%Y-%m-%d %H")))
    except ValueError:
        return None


@dataclass(frozen=True)
class FrameImage:
    """A message's image bytes and the bounds to decode them with."""

    data: bytes
    max_bytes: int
    max_pixels: int

    def pixels(self, message: Frame | DefectEvent) -> np.ndarray:
        """The image as ``HxWx3 uint8`` at the size ``message`` declares, within these bounds
        (``ImageError`` otherwise)."""
        return decode_pixels(
            self.data,
            message.encoding,
            message.width,
            message.height,
            max_bytes=self.max_bytes,
            max_pixels=self.max_pixels,
        )


def image_of(
    message: Frame | DefectEvent, store: ClaimStore | None, *, max_bytes: int, max_pixels: int
) -> FrameImage:
    """The image of a frame or defect event: the bytes it carries, decoded within the reader's
    ``max_bytes`` and ``max_pixels``; or a claim check's bytes, fetched and verified from ``store``
    and decoded within the store's limits (``ClaimCheckError`` when there is no store or the fetch
    fails)."""
    if message.image is not None:
        return FrameImage(message.image, max_bytes, max_pixels)
    ref = message.image_ref
    if ref is None:  # the codec never lets such a message through
        raise ClaimCheckError("empty", "neither image nor image_ref")
    if store is None:
        raise ClaimCheckError("no_claim_store", "a referenced frame, and no claim-check store is configured")
    return FrameImage(store.fetch(ref), store.max_frame_bytes, store.max_frame_pixels)
