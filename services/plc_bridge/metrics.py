"""The PLC bridge's Prometheus metrics (``lineguard_plc_bridge_*``, served on LINEGUARD_METRICS_PORT).

Labelled counters exist at 0 from the start: outcomes, causes and reasons from the code, stations
and PLC targets from the configuration (``prepare``), so the first fail-safe of a station is an
increase that ``LineguardPlcFailSafe`` sees.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.plc_bridge.core import FailSafeCause, VerdictOutcome
from shared.messages.codec import REASONS as CODEC_REASONS
from shared.telemetry.metrics import CONFIGURED, ServiceMetrics

METRICS = ServiceMetrics("plc_bridge")
REGISTRY = METRICS.registry

FAIL_SAFE_CAUSES = tuple(c.value for c in FailSafeCause)
LINE_CAUSES = ("scorer_silent", "frames_stalled", "kafka_unreachable")
BOUNDED_MAPS = ("dedup", "credits", "tracked_parts", "unknown_stations", "decided_at", "ledger")

VERDICTS = METRICS.counter(
    "verdicts",
    "Verdicts read, by outcome (applied, duplicate, unknown_station, after_fail_safe, late, replayed)",
    {"outcome": tuple(o.value for o in VerdictOutcome)},
)
REPLAYED_VERDICTS = METRICS.counter(
    "replayed_verdicts",
    "Verdicts read again after a restart that the applied-verdicts ledger knew, by action: skipped "
    "(the PLC showed them: only committed), reapplied (applied before the crash but never shown)",
    {"action": ("skipped", "reapplied")},
)
DEAD_LETTERS = METRICS.dead_letters(
    (*CODEC_REASONS, "other", "dead_letter_failed"),
    "Undecodable verdict records (their station failed safe; dead_letter_failed: the DLQ did not take it)",
)
FAIL_SAFES = METRICS.counter(
    "fail_safes",
    f"Fail-safe rejects asserted, by station and cause ({', '.join(FAIL_SAFE_CAUSES)})",
    {"station_id": CONFIGURED, "cause": FAIL_SAFE_CAUSES},
)
PLC_WRITES = METRICS.counter(
    "plc_writes",
    "Writes of the PLC state, by target and outcome (ok, error)",
    {"target": CONFIGURED, "outcome": ("ok", "error")},
)
PLC_CONNECTED = METRICS.gauge("plc_connected", "1 while the last write to the target succeeded", ["target"])
SCORER_OK = METRICS.gauge(
    "scorer_ok",
    "1 while the bridge has proof of a working scorer (Kafka answers, the group has members or "
    "verdicts come, no frames partition stalled)",
)
PENDING_PARTS = METRICS.gauge("pending_parts", "Tracked parts awaiting their verdict", ["station_id"])
VERDICT_TO_PLC_SECONDS = METRICS.histogram(
    "verdict_to_plc_seconds",
    "Seconds from the scorer's decision to the PLC write that shows it",
    (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
LINE_FAIL_SAFE = METRICS.gauge(
    "line_fail_safe",
    f"1 while a line-wide fail-safe condition lasts, by cause ({', '.join(LINE_CAUSES)})",
    ["cause"],
)
STALLED_PARTITIONS = METRICS.gauge(
    "frames_stalled_partitions",
    "Frames partitions with frames waiting and no scorer progress for longer than the scorer timeout",
)
COMMITS = METRICS.counter(
    "commits",
    "Offset commits of verdicts the PLC shows, by outcome (ok, error)",
    {"outcome": ("ok", "error")},
)
EVICTIONS = METRICS.evictions(BOUNDED_MAPS)


def prepare(stations: Iterable[str], targets: Iterable[str]) -> None:
    """The configured stations and PLC targets: their counters at 0."""
    METRICS.prepare(FAIL_SAFES, station_id=stations)
    METRICS.prepare(PLC_WRITES, target=targets)
