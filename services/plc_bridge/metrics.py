"""The PLC bridge's Prometheus metrics, in their own registry (served on LINEGUARD_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

VERDICTS = Counter(
    "lineguard_plc_bridge_verdicts",
    "Verdicts read, by outcome (applied, duplicate, unknown_station, after_fail_safe, late)",
    ["outcome"],
    registry=REGISTRY,
)
BAD_MESSAGES = Counter(
    "lineguard_plc_bridge_bad_messages",
    "Undecodable verdict records (their station failed safe, the record sent to the DLQ), by reason",
    ["reason"],
    registry=REGISTRY,
)
FAIL_SAFES = Counter(
    "lineguard_plc_bridge_fail_safes",
    "Fail-safe rejects asserted, by station and cause (part_deadline, scorer_silent, frames_stalled, "
    "kafka_unreachable, verdict_late, verdict_undecodable)",
    ["station", "cause"],
    registry=REGISTRY,
)
PLC_WRITES = Counter(
    "lineguard_plc_bridge_plc_writes",
    "Writes of the PLC state, by target and outcome (ok, error)",
    ["target", "outcome"],
    registry=REGISTRY,
)
PLC_CONNECTED = Gauge(
    "lineguard_plc_bridge_plc_connected",
    "1 while the last write to the target succeeded",
    ["target"],
    registry=REGISTRY,
)
SCORER_OK = Gauge(
    "lineguard_plc_bridge_scorer_ok",
    "1 while the bridge has proof of a working scorer (Kafka answers, the group has members or "
    "verdicts come, no frames partition stalled)",
    registry=REGISTRY,
)
PENDING_PARTS = Gauge(
    "lineguard_plc_bridge_pending_parts",
    "Tracked parts awaiting their verdict",
    ["station"],
    registry=REGISTRY,
)
VERDICT_TO_PLC_SECONDS = Histogram(
    "lineguard_plc_bridge_verdict_to_plc_seconds",
    "Seconds from the scorer's decision to the PLC write that shows it",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
LINE_FAIL_SAFE = Gauge(
    "lineguard_plc_bridge_line_fail_safe",
    "1 while a line-wide fail-safe condition lasts, by cause "
    "(scorer_silent, frames_stalled, kafka_unreachable)",
    ["cause"],
    registry=REGISTRY,
)
STALLED_PARTITIONS = Gauge(
    "lineguard_plc_bridge_frames_stalled_partitions",
    "Frames partitions with frames waiting and no scorer progress for longer than the scorer timeout",
    registry=REGISTRY,
)
COMMITS = Counter(
    "lineguard_plc_bridge_commits",
    "Offset commits of verdicts the PLC shows, by outcome (ok, error)",
    ["outcome"],
    registry=REGISTRY,
)
CAPPED = Counter(
    "lineguard_plc_bridge_capped",
    "Entries a memory bound dropped, by map (dedup, credits, tracked_parts, unknown_stations, decided_at)",
    ["map"],
    registry=REGISTRY,
)
