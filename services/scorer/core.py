"""The scorer's functional core: raw Kafka records in, verdicts, defect events and dead letters out.

No Kafka and no event loop here, so every rule (what is a bad frame, what a late frame gets, what a
defect event carries, which records of a batch are still to publish) is testable with plain calls.
The async shell (``service.py``) runs ``decode_record`` in a thread pool, the model's
``score_batch`` in an executor, then ``build_outcomes``, and publishes the result in one
transaction per input partition.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.engine.config import Decision, ScoreResult
from shared.errors import ImageError, LineguardError, MessageError
from shared.frames_store import ClaimStore, image_of
from shared.limits import MAX_PIXELS
from shared.messages.anomaly_map import encode_anomaly_map
from shared.messages.codec import decode
from shared.messages.pixels import decode_frame
from shared.messages.schemas import DeadLetter, DefectEvent, Frame, Verdict
from shared.settings import LatePolicy, NonFinitePolicy

SERVICE = "scorer"

RecordKey = tuple[str, int, int]  # topic, partition, offset


class ScorerFailure(LineguardError):
    """The scorer cannot go on without losing or stalling frames: it leaves the group and exits
    non-zero, so that the group rebalances and a restarted scorer takes over cleanly."""

    default_reason = "scorer_failed"


@dataclass(frozen=True)
class RawRecord:
    """A consumed Kafka record, reduced to what the core needs (and what a dead letter keeps)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None  # None: a record without a value (Kafka allows it)
    headers: tuple[tuple[str, bytes | None], ...]  # a header value may be null


@dataclass(frozen=True)
class OutRecord:
    """One encoded output record, ready to send: built and validated before any transaction."""

    topic: str  # logical topic name: verdicts, defects, dlq or alerts
    value: bytes
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class DecodedFrame:
    record: RawRecord
    frame: Frame
    pixels: np.ndarray  # HxWx3 uint8 RGB, reduced to what the model needs for large frames
    size: tuple[int, int] | None = None  # (height, width) of the frame as sent; None: the pixels'

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(height, width)`` of the frame as the camera sent it (regions and maps are in these)."""
        return self.size or (self.pixels.shape[0], self.pixels.shape[1])


@dataclass(frozen=True)
class RecordOutcome:
    """What one input record produces: a verdict (+ defect event), or a dead letter.

    ``outputs`` are the encoded records to publish (``services.scorer.outputs.prepare``);
    ``non_finite`` marks a verdict whose model numbers were not finite (decided by the fail-safe).
    """

    record: RawRecord
    verdict: Verdict | None = None
    defect: DefectEvent | None = None
    dead_letter: DeadLetter | None = None
    outputs: tuple[OutRecord, ...] = ()
    non_finite: bool = False
    fallback: int = 0  # how far the dead letter fell back: 0 whole, 1 truncated, 2 bare (outputs.py)


def dead_letter(
    record: RawRecord, reason: str, detail: str, now_ns: int | None = None, *, truncate: bool = False
) -> DeadLetter:
    return DeadLetter.for_record(
        record, reason=reason, detail=detail, service=SERVICE, failed_at=now_ns, truncate=truncate
    )


def failed(record: RawRecord, reason: str, detail: str) -> RecordOutcome:
    """The outcome of a record that cannot be processed: its dead letter."""
    return RecordOutcome(record, dead_letter=dead_letter(record, reason, detail))


def describe(exc: BaseException) -> str:
    """An exception in one line for a dead letter's detail (never the record's bytes)."""
    return f"{type(exc).__name__}: {exc}"[:2000]


def decode_record(
    record: RawRecord,
    *,
    max_image_bytes: int,
    max_pixels: int = MAX_PIXELS,
    reduce_to: int | None = None,
    store: ClaimStore | None = None,
) -> DecodedFrame | RecordOutcome:
    """Decode and validate one record; a bad one comes back as a ``RecordOutcome`` with its dead letter.

    Sizes are checked before any pixel is decoded: the message size by the codec, the declared
    dimensions and the image header's by ``decode_frame``. ``reduce_to``: the model's input size;
    a larger frame is decoded only as far as the model needs (``shared.messages.pixels``). A claim
    check is fetched from ``store`` once, its size and sha256 verified, and those bytes decoded
    within the store's limits (``shared.frames_store``); a reference that cannot be had is the
    frame's dead letter with the store's reason (``frame_missing``, ``frame_hash_mismatch``, ...).
    Never raises: anything unexpected is this record's dead letter (``decode_failed``), so one
    record cannot stop the line.
    """
    try:
        return _decode_record(record, max_image_bytes, max_pixels, reduce_to, store)
    except Exception as exc:  # the last resort, for this record only
        return failed(record, "decode_failed", describe(exc))


def _decode_record(
    record: RawRecord,
    max_image_bytes: int,
    max_pixels: int,
    reduce_to: int | None,
    store: ClaimStore | None,
) -> DecodedFrame | RecordOutcome:
    try:
        frame = decode(record.value, Frame)  # type: ignore[arg-type]  # None is refused as malformed
    except MessageError as exc:
        return failed(record, exc.reason, str(exc))
    try:
        image = image_of(frame, store, max_bytes=max_image_bytes, max_pixels=max_pixels)
        decoded = decode_frame(
            image.data,
            frame.encoding,
            frame.width,
            frame.height,
            reduce_to=reduce_to,
            max_bytes=image.max_bytes,
            max_pixels=image.max_pixels,
        )
    except ImageError as exc:
        return failed(record, exc.reason, f"frame {frame.frame_id}: {exc}")
    return DecodedFrame(record, frame, decoded.pixels, (decoded.height, decoded.width))


def late_by_ms(frame: Frame, now_ns: int) -> float | None:
    """How many ms past its deadline the frame is at ``now_ns``; None when on time or no deadline."""
    if frame.deadline_ms is None:
        return None
    over_ns = now_ns - (frame.captured_at + frame.deadline_ms * 1_000_000)
    return over_ns / 1e6 if over_ns > 0 else None


def apply_late_policy(
    decision: Decision, reason: str, over_ms: float, deadline_ms: int, policy: LatePolicy
) -> tuple[Decision, str]:
    """Fail-safe for a late verdict: the PLC has (or should have) acted already, so be conservative."""
    late = f"late by {over_ms:.0f} ms (deadline {deadline_ms} ms)"
    model_said = f"model said {decision}" + (f": {reason}" if reason else "")
    if policy is LatePolicy.SCORE:
        return decision, f"{late}; {model_said}"
    return Decision(policy.value), f"{late}; fail-safe {policy.value} ({model_said})"


def non_finite_numbers(result: ScoreResult) -> dict[str, float]:
    """The model numbers a decision rests on that are not finite (NaN or infinite)."""
    numbers = {"raw_score": result.raw_score, "score": result.score, "threshold": result.threshold}
    return {name: value for name, value in numbers.items() if not _is_finite(value)}


def _is_finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except (TypeError, ValueError):
        return False


def verdict_for(
    frame: Frame,
    result: ScoreResult,
    *,
    model_version: str,
    now_ns: int,
    late_policy: LatePolicy,
    non_finite_policy: NonFinitePolicy = NonFinitePolicy.REJECT,
) -> Verdict:
    """The verdict for a scored frame. A non-finite score, threshold or normaliser never passes:
    the frame gets ``non_finite_policy``'s decision (the wire carries such numbers as 0)."""
    decision, reason = Decision(result.decision), result.reason
    bad = non_finite_numbers(result)
    if bad:
        numbers = ", ".join(f"{name}={value}" for name, value in bad.items())
        model_said = f"model said {decision}" + (f": {reason}" if reason else "")
        decision = Decision(non_finite_policy.value)
        reason = f"non-finite {numbers}; fail-safe {decision} ({model_said})"
    over_ms = late_by_ms(frame, now_ns)
    if over_ms is not None:
        assert frame.deadline_ms is not None
        decision, reason = apply_late_policy(decision, reason, over_ms, frame.deadline_ms, late_policy)
    return Verdict.for_frame(
        frame,
        result,
        decision=decision,
        reason=reason,
        model_version=model_version,
        decided_at=now_ns,
        late=over_ms is not None,
    )


def error_verdict(frame: Frame, *, model_version: str, now_ns: int, reason: str) -> Verdict:
    """The verdict for a valid frame the model could not score: the PLC still gets an answer."""
    return Verdict.for_frame(
        frame,
        None,
        decision=Decision.ERROR,
        reason=reason,
        model_version=model_version,
        decided_at=now_ns,
        late=late_by_ms(frame, now_ns) is not None,
    )


def build_outcomes(
    decoded: Sequence[DecodedFrame],
    results: Sequence[ScoreResult] | None,
    *,
    model_version: str,
    late_policy: LatePolicy,
    non_finite_policy: NonFinitePolicy = NonFinitePolicy.REJECT,
    now_ns: int | None = None,
    error: str = "",
) -> list[RecordOutcome]:
    """Verdicts (and defect events for reject/review) for scored frames, one outcome per frame.

    ``results=None`` means the model failed on this batch; each frame then gets an ``error`` verdict
    with ``error`` as the reason. A frame whose verdict or defect event cannot be built gets a dead
    letter (``output_invalid``); the other frames of the batch are not affected.
    """
    now_ns = now_ns if now_ns is not None else time.time_ns()
    if results is not None and len(results) != len(decoded):
        raise ValueError(f"{len(results)} results for {len(decoded)} frames")
    outcomes = []
    for i, item in enumerate(decoded):
        try:
            if results is None:
                verdict = error_verdict(
                    item.frame, model_version=model_version, now_ns=now_ns, reason=error or "model failed"
                )
                outcomes.append(RecordOutcome(item.record, verdict=verdict))
            else:
                outcomes.append(
                    _scored_outcome(item, results[i], model_version, now_ns, late_policy, non_finite_policy)
                )
        except Exception as exc:  # the last resort, for this frame only
            detail = f"frame {item.frame.frame_id}: {describe(exc)}"
            outcomes.append(failed(item.record, "output_invalid", detail))
    return outcomes


def _scored_outcome(
    item: DecodedFrame,
    result: ScoreResult,
    model_version: str,
    now_ns: int,
    late_policy: LatePolicy,
    non_finite_policy: NonFinitePolicy,
) -> RecordOutcome:
    verdict = verdict_for(
        item.frame,
        result,
        model_version=model_version,
        now_ns=now_ns,
        late_policy=late_policy,
        non_finite_policy=non_finite_policy,
    )
    defect = None
    if Decision(verdict.decision).is_defect:
        height, width = item.frame_size
        # The map goes at the frame's size or at the resolution it was scored at, whichever is smaller:
        # scaled up it says nothing more, and a camera-sized PNG costs the verdict path ~70 ms at 5 MP
        # (and could pass the wire's limit). Readers scale it to width x height.
        scored = result.anomaly_map.shape[:2]
        map_height, map_width = scored if scored[0] * scored[1] < height * width else (height, width)
        defect = DefectEvent(
            verdict=verdict,
            image=item.frame.image,
            encoding=item.frame.encoding,
            width=width,
            height=height,
            anomaly_map_png=encode_anomaly_map(result.anomaly_map, map_width, map_height),
            image_ref=item.frame.image_ref,
        )
    non_finite = bool(non_finite_numbers(result))
    return RecordOutcome(item.record, verdict=verdict, defect=defect, non_finite=non_finite)


def order_by_record(outcomes: Sequence[RecordOutcome]) -> list[RecordOutcome]:
    """Outcomes in input order (partition, offset), so each partition's outputs keep frame order."""
    return sorted(outcomes, key=lambda o: (o.record.topic, o.record.partition, o.record.offset))


# -- batches between intake and publish ----------------------------------------------------------


@dataclass
class ScoredBatch:
    outcomes: list[RecordOutcome]
    epochs: list[int]  # per outcome: its partition's epoch when the record was fetched
    links: list[Any]  # span links to the frames' contexts


def merge_batches(batches: list[ScoredBatch]) -> ScoredBatch:
    """Consecutive scored batches as one, in intake order (so each partition's order is kept).

    Epochs stay with their outcomes: after a seek the same record can sit in two of the batches,
    once from before the seek (stale) and once from after it.
    """
    if len(batches) == 1:
        return batches[0]
    return ScoredBatch(
        [o for b in batches for o in b.outcomes],
        [e for b in batches for e in b.epochs],
        [link for b in batches for link in b.links],
    )


def fresh_outcomes(
    tagged: list[tuple[RecordOutcome, int]], epoch: int, next_offset: int
) -> list[RecordOutcome]:
    """What of one partition's ``(outcome, fetch epoch)`` pairs is still to publish: fetched in the
    partition's current epoch (anything older is fetched again by the seek that ended its epoch),
    not yet committed, and each offset once, in increasing order."""
    fresh = []
    for outcome, fetched_in in tagged:
        offset = outcome.record.offset
        if fetched_in == epoch and offset >= next_offset:
            fresh.append(outcome)
            next_offset = offset + 1
    return fresh


def split_for_idle_workers(records: list[RawRecord], idle_workers: int) -> list[list[RawRecord]]:
    """The batch as consecutive parts, one per idle model worker (at most one part per record).

    A burst that arrives while workers idle is then scored in parallel instead of by one worker
    while the others wait; under full load no worker is idle and batches stay whole.
    """
    parts = max(1, min(idle_workers, len(records)))
    size, extra = divmod(len(records), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [records[bounds[i] : bounds[i + 1]] for i in range(parts)]


def in_turn(partitions: Sequence[Any], turn: int) -> list[Any]:
    """``partitions`` in a stable order, starting ``turn`` places along (wrapping round).

    The consumer hands out what it buffered one partition at a time, and with a backlog one
    partition's buffer holds a whole fetch (thousands of small frames); asking each partition in
    turn, from a different first one each batch, keeps every partition moving.
    """
    ordered = sorted(partitions)
    if not ordered:
        return []
    start = turn % len(ordered)
    return ordered[start:] + ordered[:start]
