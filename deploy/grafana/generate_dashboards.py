"""Writes the Grafana dashboards in deploy/grafana/dashboards/ from the panel lists below.

Dashboards as code: edit here, run ``python deploy/grafana/generate_dashboards.py``, commit both.
A unit test checks the JSON files are what this script writes, and that every PromQL expression
names only metrics the services export.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RI = "$__rate_interval"

# (title, kind, unit, [(expr, legend)], width, height, extra)
Panel = tuple[str, str, str, list[tuple[str, str]], int, int, dict[str, Any]]


def _panel(pid: int, x: int, y: int, spec: Panel) -> dict[str, Any]:
    title, kind, unit, queries, w, h, extra = spec
    panel: dict[str, Any] = {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [
            {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
            for i, (expr, legend) in enumerate(queries)
        ],
    }
    if "description" in extra:
        panel["description"] = extra["description"]
    if "threshold" in extra:  # a red line, e.g. the frame deadline
        panel["fieldConfig"]["defaults"]["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}, {"color": "red", "value": extra["threshold"]}],
        }
        panel["fieldConfig"]["defaults"]["custom"] = {"thresholdsStyle": {"mode": "line"}}
    if kind == "stat":
        panel["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    return panel


def dashboard(uid: str, title: str, description: str, rows: list[tuple[str, list[Panel]]]) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    pid = 1
    for row_title, specs in rows:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        pid += 1
        y += 1
        x = 0
        row_height = 0
        for spec in specs:
            w, h = spec[4], spec[5]
            if x + w > 24:
                x, y = 0, y + row_height
                row_height = 0
            panels.append(_panel(pid, x, y, spec))
            pid += 1
            x += w
            row_height = max(row_height, h)
        y += row_height
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["lineguard"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "links": [{"title": "Lineguard", "type": "dashboards", "tags": ["lineguard"], "asDropdown": True}],
        "panels": panels,
    }


def _ts(
    title: str, unit: str, queries: list[tuple[str, str]], w: int = 12, h: int = 8, **extra: Any
) -> Panel:
    return (title, "timeseries", unit, queries, w, h, extra)


def _stat(title: str, unit: str, expr: str, legend: str = "", w: int = 4, h: int = 4, **extra: Any) -> Panel:
    """A stat panel shows one number: one query."""
    return (title, "stat", unit, [(expr, legend)], w, h, extra)


def _q(pct: str, metric: str, by: str = "le") -> str:
    return f"histogram_quantile({pct}, sum by ({by}) (rate({metric}_bucket[{RI}])))"


def _legend(by: str) -> str:
    """The legend naming each value of the labels in ``by`` ("product_class, decision")."""
    return " ".join("{{" + label.strip() + "}}" for label in by.split(","))


def _quantiles(metric: str, *pcts: str, by: str = "") -> list[tuple[str, str]]:
    """A histogram's quantiles (p50 and p99 unless named), per value of ``by`` if given."""
    grouping = f"le, {by}" if by else "le"
    suffix = f" {_legend(by)}" if by else ""
    return [
        (_q(pct, metric, grouping), f"p{round(float(pct) * 100)}{suffix}") for pct in pcts or ("0.5", "0.99")
    ]


def _rate(metric: str, by: str = "") -> str:
    grouping = f"sum by ({by}) " if by else "sum "
    return f"{grouping}(rate({metric}_total[{RI}]))"


def _by(metric: str, by: str) -> tuple[str, str]:
    """A counter's rate per value of ``by``, legend the value."""
    return (_rate(metric, by), _legend(by))


def _increase_by(metric: str, by: str, window: str) -> tuple[str, str]:
    """A counter's increase over ``window`` per value of ``by``, legend the value."""
    return (f"sum by ({by}) (increase({metric}_total[{window}]))", _legend(by))


def _share_by(metric: str, selector: str, by: str, window: str) -> tuple[str, str]:
    """The share of a counter's rate that matches ``selector``, per value of ``by``."""
    return (
        f"sum by ({by}) (rate({metric}_total{{{selector}}}[{window}])) "
        f"/ sum by ({by}) (rate({metric}_total[{window}]))",
        _legend(by),
    )


def _lag_by_partition(metric: str) -> tuple[str, str]:
    """A service's consumer lag (a gauge per partition), legend the partition."""
    return (f"sum by (partition) ({metric})", "partition {{partition}}")


def line_overview() -> dict[str, Any]:
    verdicts = "lineguard_scorer_verdicts_total"
    return dashboard(
        "lineguard-line",
        "Lineguard · Line overview",
        "Frames in, verdicts out, latency against the deadline, lag and dead letters.",
        [
            (
                "Now",
                [
                    _stat("Frames / s", "ops", f"sum(rate(lineguard_scorer_frames_consumed_total[{RI}]))"),
                    _stat(
                        "Reject share (15 min)",
                        "percentunit",
                        f'sum(rate({verdicts}{{decision="reject"}}[15m])) / sum(rate({verdicts}[15m]))',
                    ),
                    _stat(
                        "p99 capture → verdict",
                        "s",
                        _q("0.99", "lineguard_scorer_end_to_end_seconds"),
                        threshold=0.5,
                    ),
                    _stat("Scorers up", "none", 'sum(up{job="lineguard-scorer"})'),
                    _stat("Frames behind", "none", "sum(lineguard_scorer_consumer_lag)"),
                    _stat("PLC scorer heartbeat", "bool_on_off", "min(lineguard_plc_bridge_scorer_ok)"),
                ],
            ),
            (
                "Throughput and verdicts",
                [
                    _ts(
                        "Frames consumed / s",
                        "ops",
                        [
                            (f"sum(rate(lineguard_scorer_frames_consumed_total[{RI}]))", "frames"),
                            (f"sum(rate({verdicts}[{RI}]))", "verdicts"),
                        ],
                    ),
                    _ts(
                        "Verdicts / s by class and decision",
                        "ops",
                        [_by("lineguard_scorer_verdicts", "product_class, decision")],
                    ),
                    _ts(
                        "Defect (reject) rate by class",
                        "percentunit",
                        [
                            _share_by(
                                "lineguard_scorer_verdicts", 'decision="reject"', "product_class", "5m"
                            ),
                            ("lineguard:defect_rate:6h", "{{product_class}} 6 h baseline"),
                        ],
                    ),
                    _ts(
                        "Defect events to the explainer / s",
                        "ops",
                        [(f"sum(rate(lineguard_scorer_defect_events_total[{RI}]))", "defect events")],
                    ),
                    _ts(
                        "Verdicts / s by station and decision",
                        "ops",
                        [_by("lineguard_scorer_verdicts", "station_id, decision")],
                    ),
                    _ts(
                        "Reject rate by station",
                        "percentunit",
                        [_share_by("lineguard_scorer_verdicts", 'decision="reject"', "station_id", "5m")],
                    ),
                ],
            ),
            (
                "Latency against the deadline",
                [
                    _ts(
                        "Capture → verdict latency",
                        "s",
                        _quantiles("lineguard_scorer_end_to_end_seconds"),
                        threshold=0.5,
                        description=(
                            "Red line: 500 ms, a typical frame deadline (each frame carries its own)."
                        ),
                    ),
                    _ts(
                        "Late verdicts / s (fail-safe policy applied)",
                        "ops",
                        [(f"sum(rate(lineguard_scorer_late_verdicts_total[{RI}]))", "late")],
                    ),
                    _ts(
                        "Stage seconds per batch (p99)",
                        "s",
                        [(_q("0.99", "lineguard_scorer_stage_seconds", "le, stage"), "{{stage}}")],
                    ),
                    _ts("Batch size (p50 / p99)", "none", _quantiles("lineguard_scorer_batch_frames")),
                ],
            ),
            (
                "Kafka",
                [
                    _ts(
                        "Consumer lag by frames partition",
                        "none",
                        [_lag_by_partition("lineguard_scorer_consumer_lag")],
                    ),
                    _ts(
                        "Partitions per scorer",
                        "none",
                        [("sum by (instance) (lineguard_scorer_assigned_partitions)", "{{instance}}")],
                    ),
                    _ts(
                        "Transactions / s by outcome",
                        "ops",
                        [_by("lineguard_scorer_transactions", "outcome")],
                    ),
                    _ts(
                        "Dead letters / s by reason",
                        "ops",
                        [
                            (_rate(f"lineguard_{service}_dead_letters", "reason"), name + ": {{reason}}")
                            for service, name in (
                                ("scorer", "scorer"),
                                ("plc_bridge", "plc bridge"),
                                ("alerts", "alerts"),
                            )
                        ],
                    ),
                ],
            ),
            (
                "PLC bridge and operator alerts",
                [
                    _ts(
                        "Fail-safe rejects by station",
                        "none",
                        [_increase_by("lineguard_plc_bridge_fail_safes", "station_id, cause", "5m")],
                        w=8,
                    ),
                    _ts(
                        "Verdict → PLC write (p99)",
                        "s",
                        _quantiles("lineguard_plc_bridge_verdict_to_plc_seconds", "0.99"),
                        w=8,
                    ),
                    _ts(
                        "PLC connection",
                        "bool_on_off",
                        [
                            ("lineguard_plc_bridge_plc_connected", "{{target}}"),
                            ("lineguard_plc_bridge_scorer_ok", "scorer alive"),
                        ],
                        w=8,
                    ),
                    _ts(
                        "Bridge verdicts / s by outcome",
                        "ops",
                        [_by("lineguard_plc_bridge_verdicts", "outcome")],
                        w=8,
                    ),
                    _ts(
                        "Operator alerts by kind",
                        "none",
                        [_increase_by("lineguard_alerts_events_consumed", "kind", "15m")],
                        w=8,
                    ),
                    _ts(
                        "Webhook deliveries by outcome",
                        "none",
                        [_increase_by("lineguard_alerts_deliveries", "outcome", "15m")],
                        w=8,
                    ),
                ],
            ),
        ],
    )


def model_view() -> dict[str, Any]:
    verdicts = "lineguard_scorer_verdicts_total"
    return dashboard(
        "lineguard-model",
        "Lineguard · Model",
        "What the model decides per class, the unknown-product rate and the model version serving.",
        [
            (
                "Model in service",
                [
                    _stat(
                        "Model version",
                        "none",
                        "count by (version) (lineguard_scorer_model_info)",
                        legend="{{version}}",
                        w=8,
                        description="One series per version; two during a rolling swap.",
                    ),
                    _stat(
                        "Model swaps (24 h)", "none", "sum(increase(lineguard_scorer_model_swaps_total[24h]))"
                    ),
                    _stat(
                        "Refused models (24 h)",
                        "none",
                        "sum(increase(lineguard_scorer_model_load_failures_total[24h]))",
                    ),
                    _stat(
                        "Unknown products (1 h)",
                        "percentunit",
                        f'sum(rate({verdicts}{{product_class="unknown"}}[1h])) / sum(rate({verdicts}[1h]))',
                        w=8,
                    ),
                ],
            ),
            (
                "Decisions per class",
                [
                    _ts(
                        "Decision share by class",
                        "percentunit",
                        [
                            (
                                f"sum by (product_class, decision) (rate({verdicts}[5m])) "
                                "/ ignoring (decision) group_left "
                                f"sum by (product_class) (rate({verdicts}[5m]))",
                                "{{product_class}} {{decision}}",
                            ),
                        ],
                    ),
                    _ts(
                        "Unknown-product rate",
                        "percentunit",
                        [
                            (
                                f'sum(rate({verdicts}{{product_class="unknown"}}[5m]))'
                                f" / sum(rate({verdicts}[5m]))",
                                "unknown",
                            ),
                        ],
                    ),
                    _ts(
                        "Reject rate vs 6 h baseline",
                        "percentunit",
                        [
                            ("lineguard:defect_rate:15m", "{{product_class}} 15 min"),
                            ("lineguard:defect_rate:6h", "{{product_class}} 6 h"),
                        ],
                    ),
                    _ts(
                        "Review and error verdicts / s",
                        "ops",
                        [
                            (
                                "sum by (product_class, decision) "
                                f'(rate({verdicts}{{decision=~"review|error"}}[{RI}]))',
                                "{{product_class}} {{decision}}",
                            ),
                        ],
                    ),
                ],
            ),
            (
                "Scores, thresholds and routing",
                [
                    _ts(
                        "Normalised score by class (p50 / p99; 0.5 is the threshold)",
                        "none",
                        _quantiles("lineguard_scorer_score", by="product_class"),
                        threshold=0.5,
                    ),
                    _ts(
                        "Raw threshold by class",
                        "none",
                        [("max by (product_class) (lineguard_scorer_class_threshold)", "{{product_class}}")],
                    ),
                    _ts(
                        "Routing confidence by class (p10 / p50)",
                        "percentunit",
                        _quantiles("lineguard_scorer_route_confidence", "0.1", "0.5", by="product_class"),
                    ),
                    _ts(
                        "Operator alerts raised / s by kind", "ops", [_by("lineguard_scorer_alerts", "kind")]
                    ),
                ],
            ),
            (
                "Model stages",
                [
                    _ts(
                        "Model and k-NN seconds per batch (p50 / p99)",
                        "s",
                        _quantiles("lineguard_scorer_stage_seconds", by="stage"),
                        w=24,
                    ),
                ],
            ),
        ],
    )


def explainer_view() -> dict[str, Any]:
    return dashboard(
        "lineguard-explainer",
        "Lineguard · Explainer",
        "Defect reports, fallbacks, VLM latency, tokens and cost against the daily budget.",
        [
            (
                "Now",
                [
                    _stat(
                        "Budget left (USD)", "currencyUSD", "min(lineguard_explainer_budget_remaining_usd)"
                    ),
                    _stat(
                        "Cost today (USD, 24 h)",
                        "currencyUSD",
                        "sum(increase(lineguard_explainer_vlm_cost_usd_total[24h]))",
                    ),
                    _stat("Reports (1 h)", "none", "sum(increase(lineguard_explainer_reports_total[1h]))"),
                    _stat(
                        "Fallback share (1 h)",
                        "percentunit",
                        (
                            'sum(increase(lineguard_explainer_reports_total{source="fallback"}[1h])) '
                            "/ sum(increase(lineguard_explainer_reports_total[1h]))"
                        ),
                    ),
                    _stat("Circuit breaker", "bool_on_off", "max(lineguard_explainer_circuit_open)"),
                    _stat("Events held", "none", "sum(lineguard_explainer_held_events)"),
                ],
            ),
            (
                "Reports",
                [
                    _ts("Reports / s by source", "ops", [_by("lineguard_explainer_reports", "source")]),
                    _ts(
                        "Fallback reports by reason",
                        "none",
                        [_increase_by("lineguard_explainer_fallback_reports", "reason", "15m")],
                    ),
                    _ts("Verdict → report latency", "s", _quantiles("lineguard_explainer_report_seconds")),
                    _ts(
                        "Defects lag (events behind)",
                        "none",
                        [_lag_by_partition("lineguard_explainer_consumer_lag")],
                    ),
                ],
            ),
            (
                "VLM",
                [
                    _ts(
                        "VLM requests / s by outcome",
                        "ops",
                        [_by("lineguard_explainer_vlm_requests", "outcome")],
                    ),
                    _ts("VLM request latency", "s", _quantiles("lineguard_explainer_vlm_request_seconds")),
                    _ts(
                        "Tokens / min by type",
                        "none",
                        [
                            (
                                "sum by (token_type) (rate(lineguard_explainer_vlm_tokens_total[5m])) * 60",
                                "{{token_type}}",
                            ),
                        ],
                    ),
                    _ts(
                        "Cost against the budget",
                        "currencyUSD",
                        [
                            ("sum(increase(lineguard_explainer_vlm_cost_usd_total[24h]))", "spent (24 h)"),
                            ("min(lineguard_explainer_budget_remaining_usd)", "left today"),
                        ],
                    ),
                    _ts(
                        "Answer repairs, location disagreements, duplicates",
                        "none",
                        [
                            ("sum(increase(lineguard_explainer_answer_repairs_total[15m]))", "repairs"),
                            (
                                "sum(increase(lineguard_explainer_location_disagreements_total[15m]))",
                                "location disagreements",
                            ),
                            ("sum(increase(lineguard_explainer_duplicate_events_total[15m]))", "duplicates"),
                        ],
                        w=24,
                    ),
                ],
            ),
        ],
    )


def services_view() -> dict[str, Any]:
    """What each service does inside: scorer faults, explainer and alerts plumbing, the PLC
    bridge's writes and commits, the camera gateway's cameras and buffers, the console."""
    sc, ex, plc, al, gw, co = (
        f"lineguard_{s}_"
        for s in ("scorer", "explainer", "plc_bridge", "alerts", "camera_gateway", "console")
    )
    return dashboard(
        "lineguard-services",
        "Lineguard · Services",
        "Each service's own health: faults, retries, memory bounds, buffers and deliveries.",
        [
            (
                "Scorer faults",
                [
                    _stat("Healthy", "none", f"min({sc}healthy)"),
                    _ts("Stalls / s by what stopped", "ops", [_by(f"{sc}stalls", "stall")], w=10),
                    _ts(
                        "Timeouts and rebalance failures / s",
                        "ops",
                        [_by(f"{sc}timeouts", "stage"), (_rate(f"{sc}rebalance_failures"), "rebalance")],
                        w=10,
                    ),
                    _ts(
                        "Model announcements refused",
                        "ops",
                        [_by(f"{sc}model_announcements_refused", "reason")],
                    ),
                    _ts(
                        "Label values capped, detector state evicted / s",
                        "ops",
                        [_by(f"{sc}label_values_capped", "label"), _by(f"{sc}evictions", "map")],
                    ),
                ],
            ),
            (
                "Explainer",
                [
                    _ts(
                        "Events in, dead letters / s",
                        "ops",
                        [(_rate(f"{ex}events_consumed"), "events"), _by(f"{ex}dead_letters", "reason")],
                    ),
                    _ts(
                        "Republish avoided, reference classes evicted / s",
                        "ops",
                        [
                            (_rate(f"{ex}republish_avoided"), "republish avoided"),
                            _by(f"{ex}evictions", "map"),
                        ],
                    ),
                ],
            ),
            (
                "PLC bridge",
                [
                    _ts("PLC writes / s", "ops", [_by(f"{plc}plc_writes", "target, outcome")]),
                    _ts("Offset commits / s", "ops", [_by(f"{plc}commits", "outcome")]),
                    _ts(
                        "Parts awaiting a verdict",
                        "none",
                        [(f"sum by (station_id) ({plc}pending_parts)", "{{station_id}}")],
                    ),
                    _ts(
                        "Line-wide fail-safe, stalled frames partitions",
                        "none",
                        [
                            (f"max by (cause) ({plc}line_fail_safe)", "{{cause}}"),
                            (f"max({plc}frames_stalled_partitions)", "stalled partitions"),
                        ],
                    ),
                    _ts("Memory bounds: entries dropped / s", "ops", [_by(f"{plc}evictions", "map")], w=12),
                    _ts(
                        "Verdicts replayed after a restart (ledger)",
                        "none",
                        [(f"sum by (action) (increase({plc}replayed_verdicts_total[15m]))", "{{action}}")],
                        w=12,
                    ),
                ],
            ),
            (
                "Operator alerts",
                [
                    _stat("Webhook configured", "none", f"min({al}webhook_configured)"),
                    _stat("Retrying", "none", f"max({al}retrying)"),
                    _stat("Ledger entries", "none", f"sum({al}ledger_entries)"),
                    _ts(
                        "Suppressed, rate-limited / s",
                        "ops",
                        [_by(f"{al}suppressed", "kind"), (_rate(f"{al}rate_limited"), "rate limited")],
                        w=12,
                    ),
                    _ts("Raised to delivered (p50 / p99)", "s", _quantiles(f"{al}delivery_seconds")),
                    _ts("Ledger and de-duplication evictions / s", "ops", [_by(f"{al}evictions", "map")]),
                ],
            ),
            (
                "Camera gateway",
                [
                    _stat("Kafka up", "none", f"min({gw}kafka_up)"),
                    _ts(
                        "Sources up", "none", [(f"max by (camera_id) ({gw}source_up)", "{{camera_id}}")], w=10
                    ),
                    _ts("Source errors / s", "ops", [_by(f"{gw}source_errors", "camera_id")], w=10),
                    _ts(
                        "Frames captured, sent / s",
                        "ops",
                        [
                            (_rate(f"{gw}frames_captured", "camera_id"), "{{camera_id}} captured"),
                            (_rate(f"{gw}frames_sent", "camera_id"), "{{camera_id}} sent"),
                        ],
                    ),
                    _ts("Frames dropped / s", "ops", [_by(f"{gw}frames_dropped", "camera_id, reason")]),
                    _ts(
                        "Buffered frames and bytes",
                        "none",
                        [
                            (f"sum by (camera_id) ({gw}buffer_frames)", "{{camera_id}} frames"),
                            (f"sum by (camera_id) ({gw}buffer_bytes)", "{{camera_id}} bytes"),
                        ],
                    ),
                    _ts(
                        "Seconds blocked on a full buffer / s",
                        "percentunit",
                        [_by(f"{gw}blocked_seconds", "camera_id")],
                    ),
                    _ts(
                        "Hot folders: files pending, reconciled / s",
                        "none",
                        [
                            (f"sum by (camera_id) ({gw}files_pending)", "{{camera_id}} pending"),
                            (_rate(f"{gw}files_reconciled", "camera_id"), "{{camera_id}} reconciled"),
                        ],
                    ),
                    _ts("Triggers / s", "ops", [_by(f"{gw}triggers", "camera_id, outcome")]),
                    _ts("Transactions / s", "ops", [_by(f"{gw}transactions", "outcome")], w=8),
                    _ts(
                        "Transaction seconds (p99)", "s", _quantiles(f"{gw}transaction_seconds", "0.99"), w=8
                    ),
                    _ts("Frames per transaction (p50)", "none", _quantiles(f"{gw}batch_frames", "0.5"), w=8),
                ],
            ),
            (
                "Shadow scoring and refit proposals",
                [
                    _ts(
                        "Shadow frames and candidate verdicts / s",
                        "ops",
                        [
                            _by("lineguard_shadow_frames", "outcome"),
                            (_rate("lineguard_shadow_verdicts"), "candidate verdicts"),
                        ],
                    ),
                    _ts(
                        "Since the serving model: confirmed normals, labelled defects",
                        "none",
                        [
                            (
                                "sum by (product_class) (lineguard_loop_confirmed_normals)",
                                "{{product_class}} normals",
                            ),
                            (
                                "sum by (product_class) (lineguard_loop_labelled_defects)",
                                "{{product_class}} defects",
                            ),
                        ],
                    ),
                    _ts("Refit checks / s", "ops", [_by("lineguard_loop_checks", "outcome")], w=24),
                ],
            ),
            (
                "Operator console",
                [
                    _stat("Live pages", "none", f"sum({co}live_pages)"),
                    _ts("Records read / s", "ops", [_by(f"{co}records_consumed", "topic")], w=10),
                    _ts("Bad records / s", "ops", [_by(f"{co}bad_records", "topic, reason")], w=10),
                    _ts(
                        "Judgements, frames saved / s",
                        "ops",
                        [_by(f"{co}feedback", "judgement"), (_rate(f"{co}frames_saved"), "frames saved")],
                        w=8,
                    ),
                    _ts(
                        "Sign-ins, refused writes / s",
                        "ops",
                        [_by(f"{co}sign_ins", "outcome"), _by(f"{co}refused_writes", "reason")],
                        w=8,
                    ),
                    _ts(
                        "Pictures that could not be shown / s",
                        "ops",
                        [_by(f"{co}bad_pictures", "reason")],
                        w=8,
                    ),
                ],
            ),
        ],
    )


DASHBOARDS = {
    "line-overview.json": line_overview,
    "model.json": model_view,
    "explainer.json": explainer_view,
    "services.json": services_view,
}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in DASHBOARDS:
        (OUT / name).write_text(render(name), encoding="utf-8")
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
