"""The scorer's Prometheus metrics, in their own registry (served on LINEGUARD_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

REGISTRY = CollectorRegistry()

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)

FRAMES_CONSUMED = Counter(
    "lineguard_scorer_frames_consumed", "Records consumed from the frames topic", registry=REGISTRY
)
VERDICTS = Counter(
    "lineguard_scorer_verdicts",
    "Verdicts committed, by product class, decision and station",
    ["product_class", "decision", "station_id"],
    registry=REGISTRY,
)
LATE_VERDICTS = Counter(
    "lineguard_scorer_late_verdicts", "Verdicts decided after the frame's deadline", registry=REGISTRY
)
DEFECT_EVENTS = Counter("lineguard_scorer_defect_events", "Defect events committed", registry=REGISTRY)
DEAD_LETTERS = Counter(
    "lineguard_scorer_dead_letters",
    "Records sent to the dead-letter topic, by reason",
    ["reason"],
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "lineguard_scorer_batch_size",
    "Records per micro-batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "lineguard_scorer_stage_seconds",
    "Seconds per micro-batch spent in each stage (decode, model, knn, publish)",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
END_TO_END_SECONDS = Histogram(
    "lineguard_scorer_end_to_end_seconds",
    "Seconds from frame capture to verdict decision",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "lineguard_scorer_consumer_lag",
    "Records behind the end of each frames partition",
    ["partition"],
    registry=REGISTRY,
)
TRANSACTIONS = Counter(
    "lineguard_scorer_transactions",
    "Per-partition transactions, by outcome (committed, aborted, fenced, stale)",
    ["outcome"],
    registry=REGISTRY,
)
MODEL_INFO = Info("lineguard_scorer_model", "The model serving now", registry=REGISTRY)
MODEL_SWAPS = Counter("lineguard_scorer_model_swaps", "Models swapped in while running", registry=REGISTRY)
MODEL_LOAD_FAILURES = Counter(
    "lineguard_scorer_model_load_failures",
    "Announced models refused because they failed to load or verify (alert on any increase)",
    registry=REGISTRY,
)
MODEL_ANNOUNCEMENTS_REFUSED = Counter(
    "lineguard_scorer_model_announcements_refused",
    "Model announcements refused, by reason (unsigned, bad_signature, stale, outside_models_root, ...)",
    ["reason"],
    registry=REGISTRY,
)
ASSIGNED_PARTITIONS = Gauge(
    "lineguard_scorer_assigned_partitions", "Frames partitions assigned to this scorer", registry=REGISTRY
)
SCORES = Histogram(
    "lineguard_scorer_score",
    "Normalised anomaly scores of committed verdicts per class (0.5 is the class threshold)",
    ["product_class"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 1.0, 1.5, 2.0, 5.0),
    registry=REGISTRY,
)
ROUTE_CONFIDENCE = Histogram(
    "lineguard_scorer_route_confidence",
    "Routing confidence (margin between the nearest and second-nearest class) of committed verdicts",
    ["product_class"],
    buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0),
    registry=REGISTRY,
)
CLASS_THRESHOLD = Gauge(
    "lineguard_scorer_class_threshold",
    "Raw decision threshold of each class in the model serving now",
    ["product_class"],
    registry=REGISTRY,
)
ALERTS = Counter(
    "lineguard_scorer_alerts",
    "Operator alerts published on the alerts topic, by kind",
    ["kind"],
    registry=REGISTRY,
)

# Faults (docs/operations.md, "Scorer faults")
HEALTHY = Gauge(
    "lineguard_scorer_healthy",
    "1 while the scorer makes progress (what /healthz says), 0 when stalled or failing",
    registry=REGISTRY,
)
STALLS = Counter(
    "lineguard_scorer_stalls",
    "Progress watchdog trips, by what stopped (partition, intake, rebalance); the scorer then exits",
    ["kind"],
    registry=REGISTRY,
)
RECOVERIES = Counter(
    "lineguard_scorer_partition_recoveries",
    "Partitions recovered with a new producer and a seek to the committed offset, by cause",
    ["cause"],
    registry=REGISTRY,
)
REBALANCE_FAILURES = Counter(
    "lineguard_scorer_rebalance_failures",
    "Errors in the rebalance listener (each ends the scorer)",
    registry=REGISTRY,
)
TIMEOUTS = Counter(
    "lineguard_scorer_timeouts",
    "Operations that ran past their timeout, by stage (decode, model, send, commit, abort, recover)",
    ["stage"],
    registry=REGISTRY,
)
OUTPUTS_REFUSED = Counter(
    "lineguard_scorer_outputs_refused",
    "Output records the broker refused (too large for the topic, invalid), by topic; the frame is "
    "dead-lettered instead",
    ["topic"],
    registry=REGISTRY,
)
NON_FINITE = Counter(
    "lineguard_scorer_non_finite_scores",
    "Verdicts whose score, threshold or normaliser was not finite, given the fail-safe decision",
    registry=REGISTRY,
)
LABELS_CAPPED = Counter(
    "lineguard_scorer_label_values_capped",
    "Metric label values from the wire replaced by 'other' (over the cap) or 'invalid', by label",
    ["label"],
    registry=REGISTRY,
)
STATE_EVICTIONS = Counter(
    "lineguard_scorer_state_evictions",
    "Entries evicted from a capped map keyed by wire values (alert detector state), by map",
    ["map"],
    registry=REGISTRY,
)
