"""The camera gateway's Prometheus metrics, in their own registry (served on LINEGUARD_METRICS_PORT).

Every labelled counter is exported at 0 for each configured camera and known reason as soon as the
gateway starts (``prepare``), so ``increase()`` sees the first drop, not only the second.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

# Why a frame did not reach Kafka. Every dropped frame is counted under one of these.
DROP_REASONS = (
    "buffer_full",  # a live camera's buffer was full (drop_oldest): the oldest frame went
    "too_large",  # over the wire's byte or pixel limit
    "unreadable",  # a hot-folder file that is not a usable image (moved to rejected/)
    "encode_error",  # a decoded picture that could not be encoded
    "claim_check_failed",  # too large for the wire, and the claim-check store did not take it
    "shutdown",  # still buffered when the gateway stopped (live sources; files stay in the folder)
)
TRANSACTION_OUTCOMES = ("committed", "failed", "recovered")

FRAMES_CAPTURED = Counter(
    "lineguard_camera_gateway_frames_captured",
    "Frames made by a camera's source (before the buffer)",
    ["camera_id"],
    registry=REGISTRY,
)
FRAMES_SENT = Counter(
    "lineguard_camera_gateway_frames_sent",
    "Frames committed to the frames topic",
    ["camera_id"],
    registry=REGISTRY,
)
FRAMES_DROPPED = Counter(
    "lineguard_camera_gateway_frames_dropped",
    "Frames that never reached Kafka, by reason",
    ["camera_id", "reason"],
    registry=REGISTRY,
)
BUFFER_FRAMES = Gauge(
    "lineguard_camera_gateway_buffer_frames",
    "Frames waiting in a camera's buffer",
    ["camera_id"],
    registry=REGISTRY,
)
BUFFER_BYTES = Gauge(
    "lineguard_camera_gateway_buffer_bytes",
    "Encoded bytes waiting in a camera's buffer",
    ["camera_id"],
    registry=REGISTRY,
)
BLOCKED_SECONDS = Counter(
    "lineguard_camera_gateway_blocked_seconds",
    "Seconds a camera's source waited for room in its buffer",
    ["camera_id"],
    registry=REGISTRY,
)
FILES_PENDING = Gauge(
    "lineguard_camera_gateway_files_pending",
    "Files in a hot folder not yet sent and moved away",
    ["camera_id"],
    registry=REGISTRY,
)
FILES_RECONCILED = Counter(
    "lineguard_camera_gateway_files_reconciled",
    "Hot-folder files found sent already (in the ledger) and moved away without sending them again",
    ["camera_id"],
    registry=REGISTRY,
)
SOURCE_UP = Gauge(
    "lineguard_camera_gateway_source_up",
    "1 while a camera's source is open and delivering, else 0",
    ["camera_id"],
    registry=REGISTRY,
)
SOURCE_ERRORS = Counter(
    "lineguard_camera_gateway_source_errors",
    "Stream or device failures (open, read, decode), each followed by a reconnect",
    ["camera_id"],
    registry=REGISTRY,
)
TRIGGERS = Counter(
    "lineguard_camera_gateway_triggers",
    "Triggers received, by outcome (accepted, overrun: too many waiting for a frame)",
    ["camera_id", "outcome"],
    registry=REGISTRY,
)
TRANSACTIONS = Counter(
    "lineguard_camera_gateway_transactions",
    "Kafka transactions, by outcome (committed; failed; recovered: found committed after a failure)",
    ["outcome"],
    registry=REGISTRY,
)
TRANSACTION_SECONDS = Histogram(
    "lineguard_camera_gateway_transaction_seconds",
    "Seconds from the first send of a transaction to its commit",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
BATCH_FRAMES = Histogram(
    "lineguard_camera_gateway_batch_frames",
    "Frames per transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
KAFKA_UP = Gauge(
    "lineguard_camera_gateway_kafka_up",
    "1 while the last transaction committed, 0 after a failure until one commits again",
    registry=REGISTRY,
)


def prepare(camera_ids: Iterable[str]) -> None:
    """Create every labelled series at 0 for the configured cameras."""
    for outcome in TRANSACTION_OUTCOMES:
        TRANSACTIONS.labels(outcome=outcome)
    for camera in camera_ids:
        for counter in (FRAMES_CAPTURED, FRAMES_SENT, BLOCKED_SECONDS, FILES_RECONCILED, SOURCE_ERRORS):
            counter.labels(camera_id=camera)
        for gauge in (BUFFER_FRAMES, BUFFER_BYTES, FILES_PENDING, SOURCE_UP):
            gauge.labels(camera_id=camera).set(0)
        for reason in DROP_REASONS:
            FRAMES_DROPPED.labels(camera_id=camera, reason=reason)
        for outcome in ("accepted", "overrun"):
            TRIGGERS.labels(camera_id=camera, outcome=outcome)


def dropped(camera_id: str, reason: str, count: int = 1) -> None:
    assert reason in DROP_REASONS, reason
    FRAMES_DROPPED.labels(camera_id=camera_id, reason=reason).inc(count)
