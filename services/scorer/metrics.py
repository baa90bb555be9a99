"""The scorer's Prometheus metrics (``lineguard_scorer_*``, served on LINEGUARD_METRICS_PORT).

Labelled counters exist at 0 from the start for every value the code knows; product classes are
added when a model is loaded (``prepare_classes``), and a station's series when its first verdict
comes (``prepare_station``: every class and decision of that station at 0).
"""

from __future__ import annotations

from collections.abc import Iterable

from shared.engine.config import UNKNOWN, Decision
from shared.messages.codec import REASONS as CODEC_REASONS
from shared.messages.schemas import ALERT_KINDS
from shared.telemetry.metrics import CONFIGURED, ServiceMetrics, count_buckets

METRICS = ServiceMetrics("scorer")
REGISTRY = METRICS.registry

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
_IMAGE_REASONS = ("empty", "corrupt", "unsupported_format", "bad_dimensions")
DEAD_LETTER_REASONS = (
    *CODEC_REASONS,  # the record is not a Frame this build reads
    *_IMAGE_REASONS,  # its picture cannot be used (too_large is a codec reason too)
    "decode_failed",
    "decode_timeout",
    "output_invalid",  # its verdict or defect event would not encode
    "output_rejected",  # the broker refused its verdict or defect event
)
DECISIONS = tuple(d.value for d in Decision)
STAGES = ("decode", "model", "knn", "publish")
TIMEOUT_STAGES = ("decode", "model", "send", "commit", "abort", "recover")
OUTPUT_TOPICS = ("verdicts", "defects", "dlq", "alerts")
ALERT_STATE_MAPS = ("reject_streaks", "unknown_products", "score_drift")
# Why an announcement was refused: the label values of MODEL_ANNOUNCEMENTS_REFUSED (a fixed set;
# services/scorer/models.py refuses with these).
REFUSAL_REASONS = (
    "malformed",  # not a ModelAnnouncement this build reads
    "unsigned",
    "unknown_key",
    "bad_signature",
    "stale",  # not newer than the newest announcement taken: a replay
    "future",
    "outside_models_root",
    "digest_mismatch",  # the directory's manifest is not the announced one
    "version_mismatch",
    "bad_artifact",  # missing, tampered, oversized or invalid files or manifest
    "warm_up_failed",
    "load_failed",  # anything else that went wrong while loading
)

FRAMES_CONSUMED = METRICS.counter("frames_consumed", "Records consumed from the frames topic")
VERDICTS = METRICS.counter(
    "verdicts",
    "Verdicts committed, by product class, decision and station",
    {"product_class": CONFIGURED, "decision": DECISIONS, "station_id": ()},
)
LATE_VERDICTS = METRICS.counter("late_verdicts", "Verdicts decided after the frame's deadline")
DEFECT_EVENTS = METRICS.counter("defect_events", "Defect events committed")
DEAD_LETTERS = METRICS.dead_letters(DEAD_LETTER_REASONS, "Frames records")
BATCH_FRAMES = METRICS.histogram("batch_frames", "Records per micro-batch", count_buckets(256))
STAGE_SECONDS = METRICS.histogram(
    "stage_seconds",
    "Seconds per micro-batch spent in each stage (decode, model, knn, publish)",
    _LATENCY_BUCKETS,
    {"stage": STAGES},
)
END_TO_END_SECONDS = METRICS.histogram(
    "end_to_end_seconds", "Seconds from frame capture to verdict decision", _LATENCY_BUCKETS
)
CONSUMER_LAG = METRICS.consumer_lag("frames")
TRANSACTIONS = METRICS.transactions(
    ("committed", "aborted", "fenced", "stale"), "one per input partition and batch"
)
MODEL_INFO = METRICS.info("model", "The model serving now")
MODEL_SWAPS = METRICS.counter("model_swaps", "Models swapped in while running")
MODEL_LOAD_FAILURES = METRICS.counter(
    "model_load_failures",
    "Announced models refused because they failed to load or verify (alert on any increase)",
)
MODEL_ANNOUNCEMENTS_REFUSED = METRICS.counter(
    "model_announcements_refused",
    "Model announcements refused, by reason (unsigned, bad_signature, stale, outside_models_root, ...)",
    {"reason": REFUSAL_REASONS},
)
ASSIGNED_PARTITIONS = METRICS.gauge("assigned_partitions", "Frames partitions assigned to this scorer")
SCORES = METRICS.histogram(
    "score",
    "Normalised anomaly scores of committed verdicts per class (0.5 is the class threshold)",
    (0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 1.0, 1.5, 2.0, 5.0),
    {"product_class": CONFIGURED},
)
ROUTE_CONFIDENCE = METRICS.histogram(
    "route_confidence",
    "Routing confidence (margin between the nearest and second-nearest class) of committed verdicts",
    (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0),
    {"product_class": CONFIGURED},
)
CLASS_THRESHOLD = METRICS.gauge(
    "class_threshold", "Raw decision threshold of each class in the model serving now", ["product_class"]
)
ALERTS = METRICS.counter(
    "alerts", "Operator alerts published on the alerts topic, by kind", {"kind": ALERT_KINDS}
)

# Faults (docs/operations.md, "Scorer faults")
HEALTHY = METRICS.gauge(
    "healthy", "1 while the scorer makes progress (what /healthz says), 0 when stalled or failing"
)
STALLS = METRICS.counter(
    "stalls",
    "Progress watchdog trips, by what stopped (partition, intake, rebalance); the scorer then exits",
    {"stall": ("partition", "intake", "rebalance")},
)
RECOVERIES = METRICS.counter(
    "partition_recoveries",
    "Partitions recovered with a new producer and a seek to the committed offset, by cause",
    {"cause": ("fenced", "producer")},
)
REBALANCE_FAILURES = METRICS.counter(
    "rebalance_failures", "Errors in the rebalance listener (each ends the scorer)"
)
TIMEOUTS = METRICS.counter(
    "timeouts",
    "Operations that ran past their timeout, by stage (decode, model, send, commit, abort, recover)",
    {"stage": TIMEOUT_STAGES},
)
OUTPUTS_REFUSED = METRICS.counter(
    "outputs_refused",
    "Output records the broker refused (too large for the topic, invalid), by topic; the frame is "
    "dead-lettered instead",
    {"topic": OUTPUT_TOPICS},
)
NON_FINITE = METRICS.counter(
    "non_finite_scores",
    "Verdicts whose score, threshold or normaliser was not finite, given the fail-safe decision",
)
LABELS_CAPPED = METRICS.counter(
    "label_values_capped",
    "Metric label values from the wire replaced by 'other' (over the cap) or 'invalid', by label",
    {"label": ("station_id", "product_class")},
)
EVICTIONS = METRICS.evictions(ALERT_STATE_MAPS)


def prepare_classes(classes: Iterable[str]) -> None:
    """A model's classes (and ``unknown``): their score histograms, and their verdicts at every
    station seen so far, at 0."""
    names = [*classes, UNKNOWN]
    for metric in (VERDICTS, SCORES, ROUTE_CONFIDENCE):
        METRICS.prepare(metric, product_class=names)


def prepare_station(station_id: str) -> None:
    """A station's first verdict: every class and decision of it at 0 (so a reject after passes is
    seen by ``increase()``; the first verdict's own series starts at 1)."""
    METRICS.prepare(VERDICTS, station_id=[station_id])
