"""The gateway's cameras: a YAML file (``--config``) or one camera from the command line.

Validated with pydantic before anything starts; every problem is reported with where it is
(``cameras[1].stream.fps: ...``) in one ``ConfigError``. Unknown keys are errors, so a misspelt
option is never silently ignored. An example with every option: ``deploy/camera-gateway.yaml``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.camera_gateway.core import STREAM_ENCODINGS, CameraIdentity
from shared.engine.config import is_valid_class_name
from shared.errors import ConfigError
from shared.limits import ID_MAX
from shared.settings import OverflowPolicy, config_error

# Camera ids are Kafka keys, metric labels and part of frame ids (which must stay within ID_MAX).
CAMERA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
IMAGE_PATTERNS = ("*.png", "*.jpg", "*.jpeg", "*.bmp", "*.tif", "*.tiff")
MAX_CONFIG_BYTES = 1 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FolderSource(_Strict):
    """A hot folder: every new image file becomes one frame once fully written."""

    path: Path
    after: Literal["move", "delete"] = "move"  # what happens to a file once its frame is committed
    done_dir: Path | None = None  # after: move; default <path>/done
    rejected_dir: Path | None = None  # files that cannot be frames; default <path>/rejected
    patterns: tuple[str, ...] = IMAGE_PATTERNS  # case-insensitive file name patterns
    settle_s: float = Field(1.0, ge=0, le=600)  # unchanged this long = fully written
    incomplete_after_s: float = Field(30.0, gt=0, le=86_400)  # unchanged yet incomplete: rejected
    rescan_s: float = Field(5.0, gt=0, le=3600)  # full listing, for events a filesystem does not send
    polling: bool = False  # network filesystems (SMB, NFS) send no inotify events: poll instead

    @property
    def done(self) -> Path:
        return self.done_dir or self.path / "done"

    @property
    def rejected(self) -> Path:
        return self.rejected_dir or self.path / "rejected"


class Trigger(_Strict):
    """Take one frame per trigger instead of a rate: a file appearing, or a record on a topic."""

    file: Path | None = None  # created by the PLC/line controller; the gateway deletes it
    topic: str | None = None  # full topic name; records keyed by the camera id (or without a key)

    @model_validator(mode="after")
    def _exactly_one(self) -> Trigger:
        if (self.file is None) == (self.topic is None):
            raise ValueError("give exactly one of file or topic")
        return self


class StreamSource(_Strict):
    """A live stream (RTSP, HTTP, UDP...) or a video file, decoded by FFmpeg through PyAV."""

    url: str = Field(min_length=1, max_length=4096)  # rtsp://, http(s)://, or a video file path
    fps: float | None = Field(None, gt=0, le=1000)  # frames taken per second (default 1 without trigger)
    trigger: Trigger | None = None
    encoding: Literal["jpeg", "png", "raw-rgb", "raw8"] = "jpeg"
    jpeg_quality: int | None = Field(None, ge=1, le=100)  # default LINEGUARD_CAMERA_GATEWAY__JPEG_QUALITY
    rtsp_transport: Literal["tcp", "udp"] = "tcp"  # tcp: no lost packets, so no smeared frames
    open_timeout_s: float = Field(10.0, gt=0, le=600)
    read_timeout_s: float = Field(5.0, gt=0, le=600)  # no packet this long: reconnect
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)
    realtime: bool = True  # video files: play at their own pace (false: as fast as they decode)
    loop: bool = False  # video files: start again at the end
    options: dict[str, str] = {}  # more FFmpeg options, e.g. {"probesize": "32768"}

    @model_validator(mode="after")
    def _rate_or_trigger(self) -> StreamSource:
        if self.fps is not None and self.trigger is not None:
            raise ValueError("give fps or trigger, not both")
        if self.encoding not in STREAM_ENCODINGS:  # the Literal says the same; kept in step with core
            raise ValueError(f"encoding must be one of {STREAM_ENCODINGS}")
        return self

    @property
    def is_file(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")


class DeviceSource(_Strict):
    """A capture device behind the plug-in interface (``sources/device.py``), e.g. a GenICam camera
    through harvesters and the vendor's GenTL producer."""

    factory: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # "package.module:callable"
    options: dict[str, Any] = {}  # keyword arguments of the factory
    fps: float | None = Field(None, gt=0, le=1000)  # default: every frame the device delivers
    trigger: Trigger | None = None
    encoding: Literal["jpeg", "png", "raw-rgb", "raw8"] = "jpeg"
    jpeg_quality: int | None = Field(None, ge=1, le=100)
    grab_timeout_s: float = Field(5.0, gt=0, le=600)
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _rate_or_trigger(self) -> DeviceSource:
        if self.fps is not None and self.trigger is not None:
            raise ValueError("give fps or trigger, not both")
        return self


class CameraConfig(_Strict):
    camera_id: str
    station_id: str = Field(min_length=1, max_length=ID_MAX)
    line_id: str | None = Field(
        None, min_length=1, max_length=ID_MAX
    )  # default LINEGUARD_CAMERA_GATEWAY__LINE_ID
    product: str | None = None  # product class hint
    deadline_ms: int | None = Field(None, ge=0, le=86_400_000)
    overflow: OverflowPolicy | None = None  # live sources; default LINEGUARD_CAMERA_GATEWAY__OVERFLOW
    folder: FolderSource | None = None
    stream: StreamSource | None = None
    device: DeviceSource | None = None

    @field_validator("camera_id")
    @classmethod
    def _camera_id(cls, value: str) -> str:
        if not CAMERA_ID.match(value):
            raise ValueError(
                "must be 1-128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
            )
        return value

    @field_validator("station_id", "line_id")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("must be printable text")
        return value

    @field_validator("product")
    @classmethod
    def _product(cls, value: str | None) -> str | None:
        if value is not None and not is_valid_class_name(value):
            raise ValueError(f"{value!r} is not a valid product class name")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> CameraConfig:
        sources = [s for s in (self.folder, self.stream, self.device) if s is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one source: folder, stream or device")
        if self.folder is not None and self.overflow is not None:
            raise ValueError(
                "overflow applies to live sources; a hot folder always waits (its files are its buffer)"
            )
        return self

    def identity(self, default_line_id: str) -> CameraIdentity:
        return CameraIdentity(
            camera_id=self.camera_id,
            station_id=self.station_id,
            line_id=self.line_id or default_line_id,
            product=self.product,
            deadline_ms=self.deadline_ms,
        )


class GatewayConfig(_Strict):
    cameras: list[CameraConfig] = Field(min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _unique(self) -> GatewayConfig:
        ids = [c.camera_id for c in self.cameras]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"camera ids must be unique: {', '.join(duplicates)}")
        folders = [c.folder.path.resolve() for c in self.cameras if c.folder is not None]
        shared = sorted({str(f) for f in folders if folders.count(f) > 1})
        if shared:
            raise ValueError(f"each hot folder belongs to one camera: {', '.join(shared)}")
        return self

    @property
    def camera_ids(self) -> list[str]:
        return [c.camera_id for c in self.cameras]


def parse_config(data: Any, source: str) -> GatewayConfig:
    """Validate a loaded document; ``ConfigError`` with one line per problem."""
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
            lines.append(f"{source}: {where or 'top level'}: {err['msg']}")
        raise config_error(*lines) from None


def load_config(path: Path) -> GatewayConfig:
    """The cameras of a YAML file."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes; is it the right file?")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the camera configuration {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(data, str(path))
