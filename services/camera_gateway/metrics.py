"""The camera gateway's Prometheus metrics (``lineguard_camera_gateway_*``, on LINEGUARD_METRICS_PORT).

Every labelled counter is exported at 0 for each configured camera and known reason as soon as the
gateway starts (``prepare``), so ``increase()`` sees the first drop, not only the second.
"""

from __future__ import annotations

from collections.abc import Iterable

from shared.telemetry.metrics import CONFIGURED, ServiceMetrics, count_buckets

METRICS = ServiceMetrics("camera_gateway")
REGISTRY = METRICS.registry

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
TRIGGER_OUTCOMES = ("accepted", "overrun")
_CAMERA = {"camera_id": CONFIGURED}

FRAMES_CAPTURED = METRICS.counter(
    "frames_captured", "Frames made by a camera's source (before the buffer)", _CAMERA
)
FRAMES_SENT = METRICS.counter("frames_sent", "Frames committed to the frames topic", _CAMERA)
FRAMES_DROPPED = METRICS.counter(
    "frames_dropped",
    f"Frames that never reached Kafka, by reason ({', '.join(DROP_REASONS)})",
    {"camera_id": CONFIGURED, "reason": DROP_REASONS},
)
BUFFER_FRAMES = METRICS.gauge("buffer_frames", "Frames waiting in a camera's buffer", ["camera_id"])
BUFFER_BYTES = METRICS.gauge("buffer_bytes", "Encoded bytes waiting in a camera's buffer", ["camera_id"])
BLOCKED_SECONDS = METRICS.counter(
    "blocked_seconds", "Seconds a camera's source waited for room in its buffer", _CAMERA
)
FILES_PENDING = METRICS.gauge(
    "files_pending", "Files in a hot folder not yet sent and moved away", ["camera_id"]
)
FILES_RECONCILED = METRICS.counter(
    "files_reconciled",
    "Hot-folder files found sent already (in the ledger) and moved away without sending them again",
    _CAMERA,
)
SOURCE_UP = METRICS.gauge(
    "source_up", "1 while a camera's source is open and delivering, else 0", ["camera_id"]
)
SOURCE_ERRORS = METRICS.counter(
    "source_errors", "Stream or device failures (open, read, decode), each followed by a reconnect", _CAMERA
)
TRIGGERS = METRICS.counter(
    "triggers",
    "Triggers received, by outcome (accepted, overrun: too many waiting for a frame)",
    {"camera_id": CONFIGURED, "outcome": TRIGGER_OUTCOMES},
)
TRANSACTIONS = METRICS.transactions(TRANSACTION_OUTCOMES, "recovered: found committed after a failure")
TRANSACTION_SECONDS = METRICS.histogram(
    "transaction_seconds",
    "Seconds from the first send of a transaction to its commit",
    (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
BATCH_FRAMES = METRICS.histogram("batch_frames", "Frames per transaction", count_buckets(256))
KAFKA_UP = METRICS.gauge(
    "kafka_up", "1 while the last transaction committed, 0 after a failure until one commits again"
)


def prepare(camera_ids: Iterable[str]) -> None:
    """Create every labelled series at 0 for the configured cameras."""
    cameras = list(camera_ids)
    for counter in (FRAMES_CAPTURED, FRAMES_SENT, BLOCKED_SECONDS, FILES_RECONCILED, SOURCE_ERRORS):
        METRICS.prepare(counter, camera_id=cameras)
    METRICS.prepare(FRAMES_DROPPED, camera_id=cameras)
    METRICS.prepare(TRIGGERS, camera_id=cameras)
    for camera in cameras:
        for gauge in (BUFFER_FRAMES, BUFFER_BYTES, FILES_PENDING, SOURCE_UP):
            gauge.labels(camera_id=camera).set(0)


def dropped(camera_id: str, reason: str, count: int = 1) -> None:
    assert reason in DROP_REASONS, reason
    FRAMES_DROPPED.labels(camera_id=camera_id, reason=reason).inc(count)
