"""The one message codec: dataclasses <-> msgpack, strict and bounded.

Wire format: a msgpack map ``{"schema": "lineguard.Frame", "v": 1, <field>: <value>, ...}``.
Nested dataclasses (a DefectEvent's verdict, a Verdict's regions) are plain maps of their fields.
A message is written in its type's current version and read in any version from its type's
``OLDEST_VERSION`` on (``schemas.py``, version policy).

Decoding never trusts the bytes: the total size is checked first, msgpack itself is given limits
on every string, binary, array and map length (so a forged length cannot make it allocate), then
every field is checked for presence, type and bounds, and unknown fields are refused (see the
version policy in ``schemas.py``). Any failure is a ``MessageError`` with a reason code.
Encoding validates the same way, so a producer cannot put a message on the wire that consumers
would refuse; ``validate=False`` exists for fault injection (the camera simulator's bad frames).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from functools import cache
from typing import Any, TypeVar, Union, get_args, get_origin

import msgpack

from shared.errors import MessageError
from shared.limits import DEAD_LETTER_MAX_BYTES, MAX_MESSAGE_BYTES, MAX_PIXELS, MAX_REFERENCED_PIXELS
from shared.messages.pixels import RAW_CHANNELS
from shared.messages.schemas import (
    MESSAGE_TYPES,
    NESTED_TYPES,
    CameraLedger,
    DeadLetter,
    DefectEvent,
    Feedback,
    Frame,
    FrameRef,
    Message,
    ModelAnnouncement,
    ModelHistoryEntry,
)

T = TypeVar("T")

SCHEMA_KEY = "schema"
VERSION_KEY = "v"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REASONS = ("malformed", "wrong_schema", "unsupported_version", "too_large", "invalid_field")


def _msgpack_limits() -> dict[str, int]:
    """Bounds handed to msgpack, derived from the schemas so a new field cannot slip past them:
    no string, binary, array or map may claim more than the largest the schemas allow."""
    str_len, bin_len, items, fields = 0, DEAD_LETTER_MAX_BYTES, 0, 0
    for cls in MESSAGE_TYPES + NESTED_TYPES:
        hints = typing.get_type_hints(cls)
        fields = max(fields, len(dataclasses.fields(cls)) + 2)  # + schema name and version
        for f in dataclasses.fields(cls):
            lim = f.metadata.get("limits", {})
            items = max(items, lim.get("max_items", 0))
            if "str" in str(hints[f.name]):
                str_len = max(str_len, lim.get("max_len", 0))
    return {
        # Field limits count characters; msgpack counts bytes, and UTF-8 takes up to 4 per character.
        "max_str_len": 4 * str_len,
        "max_bin_len": bin_len,
        "max_array_len": max(items, 2),  # 2: a header is a [name, value] pair
        "max_map_len": max(items, fields),
        "max_ext_len": 0,
    }


_MSGPACK_LIMITS = _msgpack_limits()

_BY_SCHEMA: dict[str, type] = {cls.SCHEMA: cls for cls in MESSAGE_TYPES}  # type: ignore[attr-defined]


def _refusal(reason: str, detail: str, field: str | None = None) -> MessageError:
    """The ``MessageError`` to raise; ``reason`` is one of ``REASONS``:

    ``malformed`` (not msgpack, or not a map), ``wrong_schema`` (another or no schema name),
    ``unsupported_version``, ``too_large`` (message or field over its limit), ``invalid_field``
    (missing, unknown, wrongly typed or out of range; ``field`` names it).
    """
    assert reason in REASONS, reason
    return MessageError(reason, detail, field)


def size_limit(cls: type) -> int:
    """Largest encoded size accepted for a message type."""
    return DEAD_LETTER_MAX_BYTES if cls is DeadLetter else MAX_MESSAGE_BYTES


# ---- encoding -------------------------------------------------------------------------------


def _to_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


def versions(cls: type) -> range:
    """The versions of a message type this build reads: ``OLDEST_VERSION`` (default: the current
    one) to ``VERSION``."""
    newest: int = cls.VERSION  # type: ignore[attr-defined]
    return range(getattr(cls, "OLDEST_VERSION", newest), newest + 1)


def _added_after(cls: type, version: int) -> set[str]:
    """The fields ``version`` of ``cls`` does not have (added by a later version)."""
    added: dict[str, int] = getattr(cls, "ADDED_IN", {})
    return {name for name, since in added.items() if since > version}


def encode(message: Message, *, validate: bool = True) -> bytes:
    """Encode a message; with ``validate`` (the default) it must pass the decoder's checks."""
    cls = type(message)
    if cls not in MESSAGE_TYPES:
        raise _refusal("wrong_schema", f"{cls.__name__} is not a top-level message type")
    body = _to_wire(message)
    if validate:
        _check_dataclass(cls, body, "")
        _check_rules(message)
    wire = {SCHEMA_KEY: cls.SCHEMA, VERSION_KEY: cls.VERSION, **body}
    data: bytes = msgpack.packb(wire, use_bin_type=True)
    if validate and len(data) > size_limit(cls):
        limit = size_limit(cls)
        raise _refusal("too_large", f"encoded {cls.__name__} is {len(data)} bytes, over {limit}")
    return data


# ---- decoding -------------------------------------------------------------------------------


def _unpack(data: bytes | bytearray | memoryview, limit: int) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _refusal("malformed", f"expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise _refusal("malformed", "empty message")
    if len(data) > limit:
        raise _refusal("too_large", f"message is {len(data)} bytes, over {limit}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, **_MSGPACK_LIMITS)
    except msgpack.ExtraData:
        raise _refusal("malformed", "trailing bytes after the message") from None
    except ValueError as exc:  # includes UnicodeDecodeError and msgpack's limit errors
        text = str(exc)
        if "exceeds max" in text:
            raise _refusal("too_large", f"a msgpack value is over its limit ({text})") from None
        raise _refusal("malformed", f"not valid msgpack ({text})") from None
    except Exception as exc:  # FormatError, StackError, TypeError (unhashable keys), ...
        raise _refusal("malformed", f"not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise _refusal("malformed", f"top level is a {type(obj).__name__}, not a map")
    return obj


def schema_of(data: bytes) -> tuple[str, int]:
    """The (schema name, version) a message claims, after bounded unpacking."""
    wire = _unpack(data, DEAD_LETTER_MAX_BYTES)
    name, version = wire.get(SCHEMA_KEY), wire.get(VERSION_KEY)
    if not isinstance(name, str):
        raise _refusal("wrong_schema", "no schema name")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _refusal("malformed", "no integer schema version")
    return name, version


def decode(data: bytes, expected: type[T]) -> T:
    """Decode one message of type ``expected``; raise ``MessageError`` for anything else."""
    if expected not in MESSAGE_TYPES:
        raise TypeError(f"{expected!r} is not a top-level message type")
    wire = _unpack(data, size_limit(expected))
    return _from_wire(wire, expected)


def decode_any(data: bytes) -> Message:
    """Decode a message of any known type, chosen by its schema name."""
    wire = _unpack(data, DEAD_LETTER_MAX_BYTES)
    name = wire.get(SCHEMA_KEY)
    cls = _BY_SCHEMA.get(name) if isinstance(name, str) else None
    if cls is None:
        raise _refusal("wrong_schema", f"unknown schema {_show(name)}")
    if len(data) > size_limit(cls):
        raise _refusal("too_large", f"message is {len(data)} bytes, over {size_limit(cls)}")
    return typing.cast(Message, _from_wire(wire, cls))


def _from_wire(wire: dict[str, Any], expected: type[T]) -> T:
    name = wire.pop(SCHEMA_KEY, None)
    want: str = expected.SCHEMA  # type: ignore[attr-defined]
    if name != want:
        raise _refusal("wrong_schema", f"expected {want}, got {_show(name)}")
    version = wire.pop(VERSION_KEY, None)
    if not isinstance(version, int) or isinstance(version, bool):
        raise _refusal("malformed", f"schema version is {_show(version)}, not an integer")
    readable = versions(expected)
    if version not in readable:
        known = f"{readable[0]} to {readable[-1]}" if len(readable) > 1 else str(readable[0])
        raise _refusal("unsupported_version", f"{want} version {version}; this build reads {known}")
    for name in sorted(_added_after(expected, version)):
        if name in wire:
            raise _refusal("invalid_field", f"unknown field {name} (in version {version})", name)
    _check_dataclass(expected, wire, "")
    message = _build(expected, wire)
    _check_rules(message)
    return message


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---- field checks ---------------------------------------------------------------------------


@cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_dataclass(cls: type, body: Any, path: str) -> None:
    if not isinstance(body, dict):
        raise _refusal("invalid_field", f"{path or cls.__name__} must be a map", path or None)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(body) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise _refusal("invalid_field", f"unknown field {where}{unknown[0]}", where + unknown[0])
    hints = _hints(cls)
    for name, f in fields.items():
        full = f"{path}.{name}" if path else name
        if name not in body:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _refusal("invalid_field", f"missing field {full}", full)
            continue
        _check_value(hints[name], body[name], f.metadata.get("limits", {}), full)


def _check_value(tp: Any, value: Any, lim: dict[str, Any], path: str) -> None:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return
            raise _refusal("invalid_field", f"{path} must not be null", path)
        (inner,) = [o for o in options if o is not type(None)]
        _check_value(inner, value, lim, path)
        return
    if dataclasses.is_dataclass(tp):
        _check_dataclass(tp, value, path)  # type: ignore[arg-type]
        return
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list | tuple):
            raise _refusal("invalid_field", f"{path} must be an array", path)
        if len(value) > lim.get("max_items", math.inf):
            raise _refusal("too_large", f"{path} has {len(value)} items, over {lim['max_items']}", path)
        item_lim = {k: v for k, v in lim.items() if k == "max_len"}
        for i, item in enumerate(value):
            _check_value(item_tp, item, item_lim, f"{path}[{i}]")
        return
    if origin is tuple:
        item_tps = get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(item_tps):
            raise _refusal("invalid_field", f"{path} must be an array of {len(item_tps)}", path)
        for i, (item_tp, item) in enumerate(zip(item_tps, value, strict=True)):
            _check_value(item_tp, item, lim, f"{path}[{i}]")
        return
    if origin is dict:
        key_tp, value_tp = get_args(tp)
        if not isinstance(value, dict):
            raise _refusal("invalid_field", f"{path} must be a map", path)
        if len(value) > lim.get("max_items", math.inf):
            raise _refusal("too_large", f"{path} has {len(value)} entries, over {lim['max_items']}", path)
        item_lim = {k: v for k, v in lim.items() if k == "max_len"}
        for key, item in value.items():
            _check_value(key_tp, key, item_lim, f"{path} key")
            _check_value(value_tp, item, item_lim, f"{path}[{key!r}]")
        return
    _check_scalar(tp, value, lim, path)


def _check_scalar(tp: Any, value: Any, lim: dict[str, Any], path: str) -> None:
    if tp is bool:
        if not isinstance(value, bool):
            raise _refusal("invalid_field", f"{path} must be a boolean", path)
        return
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _refusal("invalid_field", f"{path} must be an integer", path)
        _check_range(value, lim, path)
        return
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _refusal("invalid_field", f"{path} must be a number", path)
        if not math.isfinite(value):
            raise _refusal("invalid_field", f"{path} must be finite", path)
        _check_range(value, lim, path)
        return
    if tp is str or tp is bytes:
        if tp is str and not isinstance(value, str):
            raise _refusal("invalid_field", f"{path} must be a string", path)
        if tp is bytes and not isinstance(value, bytes | bytearray):
            raise _refusal("invalid_field", f"{path} must be binary", path)
        if len(value) > lim.get("max_len", math.inf):
            raise _refusal("too_large", f"{path} is {len(value)} long, over {lim['max_len']}", path)
        if len(value) < lim.get("min_len", 0):
            raise _refusal("invalid_field", f"{path} is shorter than {lim['min_len']}", path)
        if "choices" in lim and value not in lim["choices"]:
            raise _refusal(
                "invalid_field", f"{path} is {_show(value)}, not one of {', '.join(lim['choices'])}", path
            )
        return
    raise TypeError(f"no wire check for {tp!r} at {path}")  # a schema author's mistake


def _check_range(value: float, lim: dict[str, Any], path: str) -> None:
    if value < lim.get("minimum", -math.inf) or value > lim.get("maximum", math.inf):
        low, high = lim.get("minimum", "-inf"), lim.get("maximum", "inf")
        raise _refusal("invalid_field", f"{path} is {value}, outside [{low}, {high}]", path)


def _build(cls: type[T], body: dict[str, Any]) -> T:
    """Construct a checked wire map as its dataclass (floats as float, arrays as the declared type)."""
    hints = _hints(typing.cast(Any, cls))
    kwargs = {name: _convert(hints[name], value) for name, value in body.items()}
    return cls(**kwargs)


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        (inner,) = [o for o in get_args(tp) if o is not type(None)]
        return _convert(inner, value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value)  # type: ignore[arg-type]
    if origin is list:
        (item_tp,) = get_args(tp)
        return [_convert(item_tp, v) for v in value]
    if origin is tuple:
        return tuple(_convert(t, v) for t, v in zip(get_args(tp), value, strict=True))
    if origin is dict:
        return dict(value)
    if tp is float:
        return float(value)
    if tp is bytes:
        return bytes(value)
    return value


# ---- cross-field rules ----------------------------------------------------------------------


def _check_rules(message: Any) -> None:
    if isinstance(message, Frame):
        _check_image(message.encoding, message.image, message.image_ref, message.width, message.height)
    elif isinstance(message, DefectEvent):
        _check_image(message.encoding, message.image, message.image_ref, message.width, message.height)
        if not message.anomaly_map_png.startswith(PNG_SIGNATURE):
            raise _refusal("invalid_field", "anomaly_map_png is not a PNG", "anomaly_map_png")
    elif isinstance(message, ModelAnnouncement) and not _is_hex(message.sha256):
        raise _refusal("invalid_field", "sha256 must be 64 lowercase hex digits", "sha256")
    elif isinstance(message, ModelHistoryEntry):
        if not _is_hex(message.announcement.sha256):
            field = "announcement.sha256"
            raise _refusal("invalid_field", "sha256 must be 64 lowercase hex digits", field)
        report = message.report_sha256
        if report and (len(report) != 64 or not _is_hex(report)):
            detail = "report_sha256 is empty or 64 lowercase hex digits"
            raise _refusal("invalid_field", detail, "report_sha256")
    elif isinstance(message, DeadLetter) and not _is_hex(message.original_value_sha256):
        raise _refusal(
            "invalid_field", "original_value_sha256 must be 64 lowercase hex digits", "original_value_sha256"
        )
    elif isinstance(message, Feedback):
        _check_feedback(message)
    elif isinstance(message, CameraLedger):
        for i, entry in enumerate(message.files):
            if not _is_hex(entry.identity):
                field = f"files[{i}].identity"
                raise _refusal("invalid_field", "identity must be 64 lowercase hex digits", field)


def _check_feedback(feedback: Feedback) -> None:
    """A good frame has no defect type or region; regions lie inside the frame when its size is known."""
    if (feedback.width is None) != (feedback.height is None):
        raise _refusal("invalid_field", "width and height must be given together", "width")
    if feedback.label == "good" and (feedback.defect_type or feedback.regions):
        raise _refusal("invalid_field", "a good frame has no defect type or region", "label")
    if feedback.width is None or feedback.height is None:
        return
    for i, region in enumerate(feedback.regions):
        if region.x + region.width > feedback.width or region.y + region.height > feedback.height:
            raise _refusal("invalid_field", f"region {i} lies outside the frame", f"regions[{i}]")


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _check_image(
    encoding: str, image: bytes | None, ref: FrameRef | None, width: int | None, height: int | None
) -> None:
    """Exactly one of the image and its claim check; dimensions checked here, before anyone fetches
    or decodes a pixel. A referenced image declares its size and may have up to
    ``MAX_REFERENCED_PIXELS``; one on the wire up to ``MAX_PIXELS``."""
    if (image is None) == (ref is None):
        raise _refusal("invalid_field", "give exactly one of image and image_ref", "image")
    if (width is None) != (height is None):
        raise _refusal("invalid_field", "width and height must be given together", "width")
    if ref is not None:
        if width is None:
            raise _refusal("invalid_field", "a referenced image must declare width and height", "width")
        if not _is_hex(ref.sha256):
            raise _refusal("invalid_field", "sha256 must be 64 lowercase hex digits", "image_ref.sha256")
    limit = MAX_PIXELS if ref is None else MAX_REFERENCED_PIXELS
    if width is not None and height is not None and width * height > limit:
        raise _refusal("too_large", f"image is {width}x{height}, over {limit} pixels", "width")
    channels = RAW_CHANNELS.get(encoding)
    if channels is None:
        return
    if width is None or height is None:
        detail = f"{encoding} images must declare width and height"
        raise _refusal("invalid_field", detail, "width")
    expected = width * height * channels
    size = len(image) if image is not None else ref.size if ref is not None else 0
    if size != expected:
        raise _refusal(
            "invalid_field",
            f"{encoding} {width}x{height} needs {expected} bytes, got {size}",
            "image" if ref is None else "image_ref.size",
        )
