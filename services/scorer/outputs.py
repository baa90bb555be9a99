"""Every output of a record, encoded and validated before any transaction begins.

``prepare`` turns an outcome (verdict + defect event, or dead letter) into the Kafka records to send.
Whatever cannot be encoded never reaches a transaction: a verdict or defect event the codec refuses
makes the frame a dead letter (``output_invalid``), and a dead letter that cannot be encoded whole
falls back to a truncated copy, then to one without the original's bytes, which always encodes.
So a record's failure stays that record's, and the publisher only ever sends valid bytes.

No Kafka and no event loop: the scorer calls these in its worker threads (``prepare``) and, for
records the broker refused, in the publisher before it retries (``dead_letter_outputs``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from opentelemetry import trace

from services.scorer.core import SERVICE, OutRecord, RawRecord, RecordOutcome, dead_letter, describe
from shared.errors import MessageError
from shared.limits import ID_MAX
from shared.messages.codec import encode
from shared.messages.schemas import AlertEvent, DeadLetter
from shared.telemetry.logging import log_event
from shared.telemetry.tracing import (
    ConsumedMessage,
    extract_context,
    get_tracer,
    inject_headers,
    set_consumed_attributes,
)

log = logging.getLogger("lineguard.scorer.outputs")
tracer = get_tracer("lineguard.scorer")

# How far a record's dead letter has fallen back (``dead_letter_outputs``): the whole original
# record when it fits, a truncated copy, then only what names it.
WHOLE, TRUNCATED, BARE = 0, 1, 2


def prepare(outcome: RecordOutcome, started_ns: int | None = None) -> RecordOutcome:
    """The outcome with its ``outputs`` encoded; never raises.

    A verdict or defect event the codec refuses (a bug, or a value no message may carry) turns the
    record into a dead letter with the reason, instead of failing its batch.

    A verdict gets the frame's own span, a child of the camera's (the frame's trace continues),
    from ``started_ns`` (when its batch began) to now; its records carry that span's context, so
    the explainer's span for the defect event is in the frame's trace too.
    """
    record = outcome.record
    letter = outcome.dead_letter
    if letter is not None:
        try:  # the letter decoding built, as it is (no second copy of the record)
            out = OutRecord("dlq", encode(letter), letter.original_key, _trace_headers(record))
            return RecordOutcome(record, dead_letter=letter, outputs=(out,), fallback=_level(letter))
        except MessageError:
            return dead_letter_outputs(outcome, letter.reason, letter.detail, TRUNCATED)
    verdict = outcome.verdict
    try:
        assert verdict is not None, "an outcome holds a verdict or a dead letter"
        with tracer.start_as_current_span(
            f"process {record.topic}",
            context=extract_context(record.headers),
            kind=trace.SpanKind.CONSUMER,
            start_time=started_ns,
        ) as span:
            set_consumed_attributes(
                span, ConsumedMessage(record.topic, record.partition, record.offset, record.key)
            )
            span.set_attribute("lineguard.frame_id", verdict.frame_id)
            span.set_attribute("lineguard.decision", verdict.decision)
            headers = tuple(inject_headers([]))
        key = verdict.station_id.encode()
        outputs = [OutRecord("verdicts", encode(verdict), key, headers)]
        if outcome.defect is not None:
            outputs.append(OutRecord("defects", encode(outcome.defect), key, headers))
    except Exception as exc:  # the last resort, for this record only
        frame = f"frame {verdict.frame_id}: " if verdict is not None else ""
        return dead_letter_outputs(outcome, "output_invalid", f"{frame}{describe(exc)}")
    return dataclasses.replace(outcome, outputs=tuple(outputs))


def dead_letter_outputs(
    outcome: RecordOutcome, reason: str, detail: str, level: int = WHOLE
) -> RecordOutcome:
    """The record as a dead letter (only), encoded: ``level`` is where the fallback starts (a
    letter the dlq topic refused is tried again one level down)."""
    record = outcome.record
    headers = _trace_headers(record)
    for step in range(level, BARE + 1):
        letter = _letter_at(record, reason, detail, step)
        try:
            value = encode(letter)
        except MessageError as exc:
            log_event(log, "dead_letter_fallback", logging.WARNING, fallback=step, error=describe(exc))
            continue
        out = OutRecord("dlq", value, letter.original_key, headers)
        return RecordOutcome(record, dead_letter=letter, outputs=(out,), fallback=step)
    raise AssertionError("a bare dead letter always encodes")  # _bare keeps every field within its limits


def _level(letter: DeadLetter) -> int:
    return TRUNCATED if letter.truncated else WHOLE


def _letter_at(record: RawRecord, reason: str, detail: str, level: int) -> DeadLetter:
    if level == WHOLE:
        return dead_letter(record, reason, detail)
    if level == TRUNCATED:
        return dead_letter(record, reason, detail, truncate=True)
    return _bare(record, reason, detail)


def _bare(record: RawRecord, reason: str, detail: str) -> DeadLetter:
    """A dead letter without the original's bytes: what names the record and what was lost."""
    letter = dead_letter(record, reason, detail, truncate=True)
    return dataclasses.replace(
        letter,
        reason=_code(reason),
        detail=detail[:2000],
        source_topic=str(record.topic)[:ID_MAX] or "unknown",
        source_partition=min(max(0, record.partition), 1 << 31),
        source_offset=max(0, record.offset),
        original_key=None,
        original_value=b"",
        original_headers=[],
        truncated=True,
        service=SERVICE,
    )


def _code(reason: str) -> str:
    return reason[:ID_MAX] if reason else "unknown"


def _trace_headers(record: RawRecord) -> tuple[tuple[str, bytes], ...]:
    try:
        return tuple(inject_headers([], context=extract_context(record.headers)))
    except Exception:  # a header we cannot read costs the trace link, nothing else
        return ()


def alert_outputs(
    alerts: Sequence[AlertEvent], headers: Sequence[tuple[str, bytes]]
) -> list[tuple[AlertEvent, OutRecord]]:
    """Alerts with their records; one the codec refuses is logged and left out (the verdict goes)."""
    out = []
    for alert in alerts:
        try:
            out.append((alert, OutRecord("alerts", encode(alert), alert.station_id.encode(), tuple(headers))))
        except MessageError as exc:
            log_event(log, "alert_invalid", logging.ERROR, kind=alert.kind, error=describe(exc))
    return out
