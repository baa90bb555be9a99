"""The messages Lineguard sends through Kafka, as plain dataclasses.

Each top-level message has a schema name and a version (``SCHEMA``/``VERSION``) that the codec
writes into every encoded message. Field limits live in each field's metadata (see ``limits``) so
that the codec, the AsyncAPI document and its test read them from one place. Cross-field rules
(raw images must match their dimensions, decisions come from a fixed set) are in ``codec.py``.

Version policy: a version's field set is closed. Adding, removing or retyping a field makes a new
version; decoders refuse fields they do not know and versions newer than theirs, so consumers are
upgraded before producers. A type that still reads older versions says so with ``OLDEST_VERSION``
and ``ADDED_IN`` (field -> the version that added it, always a field with a default): a message of an
older version has none of the later fields, which take their defaults. The codec writes the current
version only.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypedDict

from shared.engine.config import DECISIONS, UNKNOWN, Decision, Region, ScoreResult
from shared.limits import (
    DEAD_LETTER_MAX_BYTES,
    DETAIL_MAX,
    ID_MAX,
    MAX_ATTRIBUTES,
    MAX_DIMENSION,
    MAX_FILE_BYTES,
    MAX_HEADERS,
    MAX_IMAGE_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_REGIONS,
    MAX_TIMESTAMP_NS,
    TEXT_MAX,
)
from shared.messages.pixels import ENCODINGS


def limits(
    *,
    min_len: int | None = None,
    max_len: int | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    max_items: int | None = None,
) -> dict[str, Any]:
    """Field metadata read by the codec: lengths for str/bytes, bounds for numbers, item counts."""
    spec = {
        "min_len": min_len,
        "max_len": max_len,
        "minimum": minimum,
        "maximum": maximum,
        "choices": choices,
        "max_items": max_items,
    }
    return {"limits": {k: v for k, v in spec.items() if v is not None}}


# Metadata used by many fields (written out as field(metadata=...) so type checkers see the field).
_ID = limits(min_len=1, max_len=ID_MAX)
_TIMESTAMP = limits(minimum=0, maximum=MAX_TIMESTAMP_NS)


SHA256_HEX = 64  # characters of a sha256 digest in lowercase hex


@dataclass(frozen=True)
class FrameRef:
    """A claim check: a frame's bytes in the frames store (``shared/frames_store.py``), not on the wire.

    ``uri`` is the stored object's URL (``file:///...``, ``s3://bucket/...``), under the store's
    ``claims/`` folder. A reader takes only a reference inside the store it is configured with,
    reads at most ``size`` bytes once, and decodes them only when they have ``size`` bytes and this
    ``sha256``.
    """

    uri: str = field(metadata=limits(min_len=1, max_len=TEXT_MAX))
    size: int = field(metadata=limits(minimum=1, maximum=MAX_FILE_BYTES))  # bytes of the stored image
    sha256: str = field(metadata=limits(min_len=SHA256_HEX, max_len=SHA256_HEX))  # lowercase hex


class FrameKeyArgs(TypedDict):
    frame_id: str
    line_id: str
    station_id: str
    camera_id: str


class FrameKeyed(Protocol):
    """Anything that names a frame by the four ids: the messages below, the explainer's report."""

    @property
    def frame_id(self) -> str: ...
    @property
    def line_id(self) -> str: ...
    @property
    def station_id(self) -> str: ...
    @property
    def camera_id(self) -> str: ...


def frame_keys(source: FrameKeyed) -> FrameKeyArgs:
    """``source``'s four ids as keyword arguments, to build another message about the same frame."""
    return FrameKeyArgs(
        frame_id=source.frame_id,
        line_id=source.line_id,
        station_id=source.station_id,
        camera_id=source.camera_id,
    )


@dataclass(frozen=True)
class FrameKeys:
    """Which frame a message is about: the four ids that every per-frame message (frame, verdict,
    report, feedback) starts with, declared once. A subclass's own fields follow them on the wire."""

    frame_id: str = field(metadata=_ID)
    line_id: str = field(metadata=_ID)
    station_id: str = field(metadata=_ID)
    camera_id: str = field(metadata=_ID)


@dataclass(frozen=True)
class Frame(FrameKeys):
    """One camera image. Key on the ``frames`` topic: ``camera_id``.

    The image travels in ``image``, or (version 2) as a claim check in ``image_ref`` when it is too
    large for the wire: exactly one of the two.
    """

    SCHEMA: ClassVar[str] = "lineguard.Frame"
    VERSION: ClassVar[int] = 2
    OLDEST_VERSION: ClassVar[int] = 1
    ADDED_IN: ClassVar[dict[str, int]] = {"image_ref": 2}

    captured_at: int = field(metadata=_TIMESTAMP)  # ns since the epoch
    encoding: str = field(metadata=limits(choices=ENCODINGS))
    image: bytes | None = field(metadata=limits(min_len=1, max_len=MAX_IMAGE_BYTES))  # None: image_ref
    # Required for raw8/raw-rgb (len(image) == width * height * channels) and referenced images,
    # optional otherwise.
    width: int | None = field(default=None, metadata=limits(minimum=1, maximum=MAX_DIMENSION))
    height: int | None = field(default=None, metadata=limits(minimum=1, maximum=MAX_DIMENSION))
    product: str | None = field(default=None, metadata=limits(min_len=1, max_len=ID_MAX))  # a hint
    # Milliseconds after captured_at by which the PLC needs the verdict.
    deadline_ms: int | None = field(default=None, metadata=limits(minimum=0, maximum=86_400_000))
    attributes: dict[str, str] = field(
        default_factory=dict, metadata=limits(max_items=MAX_ATTRIBUTES, max_len=TEXT_MAX)
    )
    image_ref: FrameRef | None = field(default=None, metadata=limits())  # the image in the frames store


@dataclass(frozen=True)
class RegionMsg:
    """An anomalous region in the input image's pixel coordinates."""

    x: int = field(metadata=limits(minimum=0, maximum=MAX_DIMENSION))
    y: int = field(metadata=limits(minimum=0, maximum=MAX_DIMENSION))
    width: int = field(metadata=limits(minimum=1, maximum=MAX_DIMENSION))
    height: int = field(metadata=limits(minimum=1, maximum=MAX_DIMENSION))
    score: float = field(metadata=limits())
    area_fraction: float = field(metadata=limits(minimum=0.0, maximum=1.0))

    @classmethod
    def from_region(cls, region: Region) -> RegionMsg:
        """The engine's region on the wire (the one conversion): at least one pixel wide and high,
        finite score, area fraction within 0..1."""
        return cls(
            x=int(region.x),
            y=int(region.y),
            width=max(1, int(region.width)),
            height=max(1, int(region.height)),
            score=_finite(region.score),
            area_fraction=min(1.0, max(0.0, _finite(region.area_fraction))),
        )


def _finite(value: float) -> float:
    """The wire refuses NaN and infinities; an engine value that is not finite goes out as 0."""
    return float(value) if math.isfinite(value) else 0.0


@dataclass(frozen=True)
class Verdict(FrameKeys):
    """The decision for one frame. Key on the ``verdicts`` (PLC) topic: ``station_id``."""

    SCHEMA: ClassVar[str] = "lineguard.Verdict"
    VERSION: ClassVar[int] = 1

    product_class: str = field(metadata=_ID)  # routed (or hinted) class, or "unknown"
    route_confidence: float = field(metadata=limits(minimum=0.0, maximum=1.0))
    decision: str = field(metadata=limits(choices=DECISIONS))
    score: float = field(metadata=limits())  # normalised: the class threshold maps to 0.5
    raw_score: float = field(metadata=limits())
    threshold: float = field(metadata=limits())
    regions: list[RegionMsg] = field(metadata=limits(max_items=MAX_REGIONS))
    model_version: str = field(metadata=limits(max_len=ID_MAX))  # "" when no model could score
    captured_at: int = field(metadata=_TIMESTAMP)  # ns
    decided_at: int = field(metadata=_TIMESTAMP)  # ns
    latency_ms: float = field(metadata=limits(minimum=0.0))
    late: bool = field(metadata=limits())
    reason: str = field(metadata=limits(max_len=TEXT_MAX))  # "" or why (late, unknown product, ...)

    @classmethod
    def for_frame(
        cls,
        frame: Frame,
        result: ScoreResult | None,
        *,
        decision: Decision,
        reason: str,
        model_version: str,
        decided_at: int,
        late: bool,
    ) -> Verdict:
        """The one way a verdict is built: the frame's identity and timing, ``result``'s class,
        scores and regions (made wire-safe), and the decision the scorer took.

        ``result=None``: the frame could not be scored; the verdict names the hinted class (or
        ``unknown``) and carries no scores or regions.
        """
        regions: list[RegionMsg] = []
        if result is None:
            product_class = frame.product or UNKNOWN
            route_confidence = score = raw_score = threshold = 0.0
        else:
            product_class = result.product_class or UNKNOWN
            route_confidence = min(1.0, max(0.0, _finite(result.route_confidence)))
            score, raw_score, threshold = map(_finite, (result.score, result.raw_score, result.threshold))
            regions = [RegionMsg.from_region(r) for r in result.regions]
        return cls(
            **frame_keys(frame),
            product_class=product_class,
            route_confidence=route_confidence,
            decision=decision,
            score=score,
            raw_score=raw_score,
            threshold=threshold,
            regions=regions,
            model_version=model_version,
            captured_at=frame.captured_at,
            decided_at=decided_at,
            latency_ms=max(0.0, (decided_at - frame.captured_at) / 1e6),
            late=late,
            reason=reason[:4000],
        )


@dataclass(frozen=True)
class DefectEvent:
    """A rejected or review verdict with its evidence, for the explainer (``defects`` topic).

    The frame's bytes are in ``image``, or (version 2) the frame's claim check in ``image_ref``:
    exactly one of the two, as on the frame.
    """

    SCHEMA: ClassVar[str] = "lineguard.DefectEvent"
    VERSION: ClassVar[int] = 2
    OLDEST_VERSION: ClassVar[int] = 1
    ADDED_IN: ClassVar[dict[str, int]] = {"image_ref": 2}

    verdict: Verdict = field(metadata=limits())
    image: bytes | None = field(metadata=limits(min_len=1, max_len=MAX_IMAGE_BYTES))  # None: image_ref
    encoding: str = field(metadata=limits(choices=ENCODINGS))
    width: int = field(metadata=limits(minimum=1, maximum=MAX_DIMENSION))  # the frame's size
    height: int = field(metadata=limits(minimum=1, maximum=MAX_DIMENSION))
    # 8-bit grayscale PNG, 128 = the class threshold: width x height, or the resolution the frame was
    # scored at where that is smaller (large frames; consumers scale it to width x height).
    anomaly_map_png: bytes = field(metadata=limits(min_len=8, max_len=MAX_IMAGE_BYTES))
    image_ref: FrameRef | None = field(default=None, metadata=limits())  # the frame in the frames store


# What a truncated dead letter keeps of an original that does not fit whole (see DeadLetter.for_record).
_KEPT_KEY_BYTES = 1024
_KEPT_HEADERS = 64
_KEPT_HEADER_NAME = 256
_KEPT_HEADER_BYTES = 1024
_KEPT_VALUE_BYTES = MAX_MESSAGE_BYTES - (1 << 20)
_LETTER_KEY_MAX = 1 << 20
_LETTER_HEADER_MAX = 1 << 20
# Room for everything in an encoded letter but the original's bytes: field names, ids (at most 256
# characters, 4 bytes each in UTF-8), the detail (at most DETAIL_MAX characters) and msgpack headers.
_LETTER_ENVELOPE_BYTES = 4 * DETAIL_MAX + (64 << 10)


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be processed, with why (``dlq`` topic).

    Kept whole when it fits (``truncated`` false); otherwise a truncated copy (the first bytes of its
    key and value, its first headers, cut) that still names the record (topic, partition, offset) and
    says what was lost (sizes, header count, the value's sha256).
    """

    SCHEMA: ClassVar[str] = "lineguard.DeadLetter"
    VERSION: ClassVar[int] = 2

    reason: str = field(metadata=_ID)  # machine-readable code, e.g. "malformed", "corrupt", "too_large"
    detail: str = field(metadata=limits(max_len=DETAIL_MAX))
    source_topic: str = field(metadata=_ID)
    source_partition: int = field(metadata=limits(minimum=0, maximum=1 << 31))
    source_offset: int = field(metadata=limits(minimum=0, maximum=MAX_TIMESTAMP_NS))
    original_key: bytes | None = field(metadata=limits(max_len=_LETTER_KEY_MAX))
    original_value: bytes = field(metadata=limits(max_len=MAX_MESSAGE_BYTES))
    # Kafka allows a header without a value (null).
    original_headers: list[tuple[str, bytes | None]] = field(
        metadata=limits(max_items=MAX_HEADERS, max_len=_LETTER_HEADER_MAX)
    )
    truncated: bool = field(metadata=limits())  # original_* hold only the first part of the record
    original_key_size: int = field(metadata=limits(minimum=0, maximum=MAX_TIMESTAMP_NS))  # 0: null key
    original_value_size: int = field(metadata=limits(minimum=0, maximum=MAX_TIMESTAMP_NS))
    original_value_sha256: str = field(metadata=limits(min_len=64, max_len=64))  # lowercase hex
    original_header_count: int = field(metadata=limits(minimum=0, maximum=MAX_TIMESTAMP_NS))
    failed_at: int = field(metadata=_TIMESTAMP)  # ns
    service: str = field(metadata=_ID)

    @classmethod
    def for_record(
        cls,
        record: Any,
        *,
        reason: str,
        detail: str,
        service: str,
        failed_at: int | None = None,
        truncate: bool = False,
    ) -> DeadLetter:
        """The dead letter for a consumed record (anything with Kafka's ``topic``, ``partition``,
        ``offset``, ``key``, ``value`` and ``headers``; header values may be None).

        Kept whole when every part is within the letter's limits and the whole fits
        ``DEAD_LETTER_MAX_BYTES``; else (or with ``truncate``) a truncated copy: the key's first KiB,
        the first 64 headers (names cut to 256 characters, values to 1 KiB) and the value's first
        15 MiB, which always fits.
        """
        key = None if record.key is None else bytes(record.key)
        value = bytes(record.value or b"")
        headers = [(str(k), None if v is None else bytes(v)) for k, v in record.headers or ()]
        whole = not truncate and _fits_whole(key, value, headers)
        if not whole:
            key = None if key is None else key[:_KEPT_KEY_BYTES]
            headers = [
                (k[:_KEPT_HEADER_NAME], None if v is None else v[:_KEPT_HEADER_BYTES])
                for k, v in headers[:_KEPT_HEADERS]
            ]
        return cls(
            reason=reason[:ID_MAX] or "unknown",
            detail=detail[:DETAIL_MAX],
            source_topic=str(record.topic),
            source_partition=record.partition,
            source_offset=record.offset,
            original_key=key,
            original_value=value if whole else value[:_KEPT_VALUE_BYTES],
            original_headers=headers,
            truncated=not whole,
            original_key_size=len(record.key or b""),
            original_value_size=len(value),
            original_value_sha256=hashlib.sha256(value).hexdigest(),
            original_header_count=len(record.headers or ()),
            failed_at=failed_at if failed_at is not None else time.time_ns(),
            service=service,
        )


def _fits_whole(key: bytes | None, value: bytes, headers: list[tuple[str, bytes | None]]) -> bool:
    """Whether a letter holding the record whole keeps within every limit (sizes counted generously:
    four bytes per character of a header name, nine bytes of msgpack per item). The key counts twice:
    the letter's Kafka record carries it as its key too, and letter plus key must fit the topic."""
    if len(key or b"") > _LETTER_KEY_MAX or len(value) > MAX_MESSAGE_BYTES or len(headers) > MAX_HEADERS:
        return False
    size = 2 * len(key or b"") + len(value) + _LETTER_ENVELOPE_BYTES
    for name, header_value in headers:
        if len(name) > _LETTER_HEADER_MAX or len(header_value or b"") > _LETTER_HEADER_MAX:
            return False
        size += 4 * len(name) + len(header_value or b"") + 18
    return size <= DEAD_LETTER_MAX_BYTES


ANNOUNCEMENT_KEY_ID_LEN = 16  # hex digits of the signing key's id (services/scorer/trust.py)
ANNOUNCEMENT_SIGNATURE_LEN = 64  # bytes of an Ed25519 signature


@dataclass(frozen=True)
class ModelAnnouncement:
    """A model ready to serve (``models`` topic, compacted; key: ``"current"``).

    Signed with Ed25519 over every other field (``services/scorer/trust.py``); ``key_id`` and
    ``signature`` are empty on an unsigned announcement, which only a scorer that trusts no key takes.
    """

    SCHEMA: ClassVar[str] = "lineguard.ModelAnnouncement"
    VERSION: ClassVar[int] = 2

    model_version: str = field(metadata=_ID)
    path: str = field(metadata=limits(min_len=1, max_len=TEXT_MAX))  # relative to the models root
    announced_at: int = field(metadata=_TIMESTAMP)  # ns
    sha256: str = field(metadata=limits(min_len=64, max_len=64))  # the manifest's digest, lowercase hex
    key_id: str = field(default="", metadata=limits(max_len=ANNOUNCEMENT_KEY_ID_LEN))
    signature: bytes = field(default=b"", metadata=limits(max_len=ANNOUNCEMENT_SIGNATURE_LEN))


MODEL_HISTORY_ACTIONS = ("announce", "promote", "rollback")


@dataclass(frozen=True)
class ModelHistoryEntry:
    """One model announcement as it was sent, with how and why (``model-history`` topic, kept and never
    compacted; key: the model version).

    Written in the same transaction as the announcement on the compacted ``models`` topic, so the
    history holds every announcement that topic ever held. ``announcement`` is the announcement exactly
    as sent, signature included; the other fields are the announcing command's own account (unsigned).
    """

    SCHEMA: ClassVar[str] = "lineguard.ModelHistoryEntry"
    VERSION: ClassVar[int] = 1

    announcement: ModelAnnouncement = field(metadata=limits())
    action: str = field(metadata=limits(choices=MODEL_HISTORY_ACTIONS))  # which command sent it
    actor: str = field(metadata=_ID)  # the account that ran the command
    reason: str = field(metadata=limits(max_len=TEXT_MAX))  # why: a shadow report's figures, a rollback's
    report_sha256: str = field(metadata=limits(max_len=64))  # "" or the sha256 of the shadow report file
    previous_version: str = field(metadata=limits(max_len=ID_MAX))  # newest in the history before, or ""


ALERT_KINDS = ("consecutive_rejects", "unknown_product", "score_drift")
ALERT_SEVERITIES = ("info", "warning", "critical")
MAX_ALERT_FRAMES = 64


@dataclass(frozen=True)
class AlertEvent:
    """Something an operator acts on at once (``alerts`` topic; key: ``station_id``).

    Raised by the scorer's rules (``services/scorer/alerts.py``), forwarded by ``lineguard alerts``.
    """

    SCHEMA: ClassVar[str] = "lineguard.AlertEvent"
    VERSION: ClassVar[int] = 1

    alert_id: str = field(metadata=_ID)  # unique per raised alert
    kind: str = field(metadata=limits(choices=ALERT_KINDS))
    severity: str = field(metadata=limits(choices=ALERT_SEVERITIES))
    line_id: str = field(metadata=_ID)
    station_id: str = field(metadata=_ID)
    product_class: str = field(metadata=limits(max_len=ID_MAX))  # "" when not about one class
    summary: str = field(metadata=limits(min_len=1, max_len=TEXT_MAX))  # one line for a human
    frame_ids: list[str] = field(metadata=limits(max_items=MAX_ALERT_FRAMES, max_len=ID_MAX))  # evidence
    details: dict[str, str] = field(metadata=limits(max_items=MAX_ATTRIBUTES, max_len=TEXT_MAX))
    raised_at: int = field(metadata=_TIMESTAMP)  # ns


REPORT_SOURCES = ("vlm", "fallback")
REPORT_GRADES = ("A", "B", "C", "D", "E", "F")
SEVERITIES = ("minor", "moderate", "severe")
MAX_FINDINGS = 32
MAX_ACTIONS = 32


@dataclass(frozen=True)
class FindingMsg:
    """One defect in a report. ``location`` is a 3x3 grid cell code ("upper left", ...) or ""."""

    defect_type: str = field(metadata=_ID)
    location: str = field(metadata=limits(max_len=ID_MAX))
    severity: str = field(metadata=limits(choices=SEVERITIES))
    description: str = field(metadata=limits(max_len=TEXT_MAX))
    possible_cause: str = field(metadata=limits(max_len=TEXT_MAX))
    location_agrees: bool | None = field(metadata=limits())  # None: not cross-checked


@dataclass(frozen=True)
class Report(FrameKeys):
    """The explainer's defect report for one DefectEvent (``reports`` topic; key: ``station_id``).

    The full report (evidence, images, HTML) is in the report store at ``report_path``. Grade,
    summary and recommended actions come from the scorer's decision and fixed texts; the VLM's words
    are in the findings of a ``vlm`` report and quoted in the summary. Version 2 adds
    ``vlm_disagrees``.
    """

    SCHEMA: ClassVar[str] = "lineguard.Report"
    VERSION: ClassVar[int] = 2

    product_class: str = field(metadata=_ID)
    decision: str = field(metadata=limits(choices=DECISIONS))
    score: float = field(metadata=limits())
    source: str = field(metadata=limits(choices=REPORT_SOURCES))  # "fallback": not written by a VLM
    fallback_reason: str = field(metadata=limits(max_len=TEXT_MAX))  # "" for VLM reports
    vlm_model: str = field(metadata=limits(max_len=ID_MAX))
    language: str = field(metadata=limits(min_len=2, max_len=16))
    grade: str = field(metadata=limits(choices=REPORT_GRADES))
    anomalous: bool = field(metadata=limits())
    confidence: float | None = field(metadata=limits(minimum=0.0, maximum=1.0))  # None: fallback
    summary: str = field(metadata=limits(max_len=TEXT_MAX))
    findings: list[FindingMsg] = field(metadata=limits(max_items=MAX_FINDINGS))
    recommended_actions: list[str] = field(metadata=limits(max_items=MAX_ACTIONS, max_len=TEXT_MAX))
    location_disagreement: bool = field(metadata=limits())
    # The VLM found no defect where the scorer decided reject/review; the decision stands.
    vlm_disagrees: bool = field(metadata=limits())
    report_path: str = field(metadata=limits(min_len=1, max_len=TEXT_MAX))  # relative to the store root
    prompt_tokens: int = field(metadata=limits(minimum=0, maximum=1 << 40))
    completion_tokens: int = field(metadata=limits(minimum=0, maximum=1 << 40))
    cost_usd: float = field(metadata=limits(minimum=0.0))
    captured_at: int = field(metadata=_TIMESTAMP)  # ns, the frame's
    created_at: int = field(metadata=_TIMESTAMP)  # ns


MAX_LEDGER_FILES = 256  # files in one gateway transaction for one camera (gateway max_batch)


@dataclass(frozen=True)
class LedgerFile:
    """A hot-folder file whose frame a camera gateway's transaction committed."""

    name: str = field(metadata=limits(min_len=1, max_len=TEXT_MAX))  # relative to the hot folder
    identity: str = field(metadata=limits(min_len=64, max_len=64))  # sha256 of name, size, mtime, content
    frame_id: str = field(metadata=_ID)


@dataclass(frozen=True)
class CameraLedger:
    """The hot-folder files of one camera that a gateway's latest transaction for that camera committed,
    written in that same transaction (``camera-ledger`` topic, compacted; key: ``camera_id``).

    A restarted gateway reads the last one per camera: a file it names that is still in the folder was
    sent already and is moved away without being sent again.
    """

    SCHEMA: ClassVar[str] = "lineguard.CameraLedger"
    VERSION: ClassVar[int] = 1

    camera_id: str = field(metadata=_ID)
    files: list[LedgerFile] = field(metadata=limits(max_items=MAX_LEDGER_FILES))
    committed_at: int = field(metadata=_TIMESTAMP)  # ns, when the transaction was sent


FEEDBACK_LABELS = ("defect", "good")  # good: a false reject (or a confirmed normal)
FEEDBACK_AUTH = ("token", "proxy")  # how the console knew the operator (docs/operations.md)
MAX_FEEDBACK_REGIONS = 16


@dataclass(frozen=True)
class Feedback(FrameKeys):
    """An operator's judgement of one frame, from the console (``feedback`` topic, compacted; key:
    ``frame_id``, so the latest judgement of a frame is the one that counts).

    The frame's identity, class and the model's decision are the verdict's, copied by the console.
    ``regions`` are in the frame's pixels: a region chosen from the verdict keeps the scorer's score,
    one the operator drew has score 0. ``width``/``height``: the frame's size when the console had
    its image (needed to turn regions into masks), else null.
    """

    SCHEMA: ClassVar[str] = "lineguard.Feedback"
    VERSION: ClassVar[int] = 1

    product_class: str = field(metadata=_ID)  # the verdict's class, or "unknown"
    label: str = field(metadata=limits(choices=FEEDBACK_LABELS))
    defect_type: str = field(metadata=limits(max_len=ID_MAX))  # "" for good, or a defect of no stated type
    regions: list[RegionMsg] = field(metadata=limits(max_items=MAX_FEEDBACK_REGIONS))
    width: int | None = field(metadata=limits(minimum=1, maximum=MAX_DIMENSION))
    height: int | None = field(metadata=limits(minimum=1, maximum=MAX_DIMENSION))
    decision: str = field(metadata=limits(choices=DECISIONS))  # the model's, on the verdict
    score: float = field(metadata=limits())  # the verdict's normalised score
    model_version: str = field(metadata=limits(max_len=ID_MAX))  # the verdict's
    captured_at: int = field(metadata=_TIMESTAMP)  # ns, the frame's
    operator: str = field(metadata=_ID)  # who
    authenticated_by: str = field(metadata=limits(choices=FEEDBACK_AUTH))
    submitted_at: int = field(metadata=_TIMESTAMP)  # ns, when
    comment: str = field(metadata=limits(max_len=TEXT_MAX))


MESSAGE_TYPES: tuple[type, ...] = (
    Frame,
    Verdict,
    DefectEvent,
    DeadLetter,
    ModelAnnouncement,
    AlertEvent,
    Report,
    CameraLedger,
    Feedback,
    ModelHistoryEntry,
)
NESTED_TYPES: tuple[type, ...] = (RegionMsg, FindingMsg, LedgerFile, FrameRef)

Message = (
    Frame
    | Verdict
    | DefectEvent
    | DeadLetter
    | ModelAnnouncement
    | AlertEvent
    | Report
    | CameraLedger
    | Feedback
    | ModelHistoryEntry
)
