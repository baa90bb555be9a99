"""Dashboards and alert rules against the code: every metric they name is one a service exports.

The services' registries are read at test time (``services/<name>/metrics.py``), so renaming a
metric in a service without updating the dashboards or rules fails here.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.telemetry.metrics import LabelSpec
from tests.support.metrics import all_service_metrics
from tests.support.promql import PromQLSyntaxError, Selector, selectors

ROOT = Path(__file__).resolve().parents[3]
GRAFANA = ROOT / "deploy" / "grafana"
PROMETHEUS = ROOT / "deploy" / "prometheus"
RUNBOOK = ROOT / "docs" / "operations.md"
# Series Prometheus itself makes for every target.
PROMETHEUS_SERIES: dict[str, set[str] | None] = {"up": set(), "scrape_duration_seconds": set()}
TARGET_LABELS = {"job", "instance"}
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def exported_series() -> dict[str, set[str] | None]:
    """Sample name -> its label names (None: labels set at run time, as for an Info)."""
    series: dict[str, set[str] | None] = {}
    for metrics in all_service_metrics():
        registry = metrics.registry
        label_names: dict[str, tuple[str, ...]] = {}
        # prometheus_client keeps each collector's label names only on the collector itself.
        for collector, names in registry._collector_to_names.items():
            for name in names:
                label_names[name] = tuple(getattr(collector, "_labelnames", ()))
        for family in registry.collect():
            for suffix in _SUFFIXES[family.type]:
                name = family.name + suffix
                labels: set[str] | None = set(label_names.get(name, label_names.get(family.name, ())))
                if family.type == "info":
                    labels = None
                elif suffix == "_bucket" and labels is not None:
                    labels.add("le")
                series[name] = labels
    return series


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in sorted((PROMETHEUS / "rules").glob("*.yml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    return groups


def recorded_series() -> dict[str, set[str] | None]:
    return {r["record"]: None for g in rule_groups() for r in g["rules"] if "record" in r}


def dashboard_expressions() -> list[tuple[str, str]]:
    found = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
    return found


def rule_expressions() -> list[tuple[str, str]]:
    return [(r.get("alert") or r["record"], r["expr"]) for g in rule_groups() for r in g["rules"]]


def unknown_names(expr: str, known: dict[str, set[str] | None]) -> list[str]:
    problems = []
    for selector in selectors(expr):
        if selector.metric not in known:
            problems.append(f"metric {selector.metric} is not exported")
            continue
        labels = known[selector.metric]
        if labels is not None:
            extra = selector.labels - labels - TARGET_LABELS
            if extra:
                problems.append(f"{selector.metric} has no label {', '.join(sorted(extra))}")
    return problems


@pytest.fixture(scope="module")
def known() -> dict[str, set[str] | None]:
    return {**exported_series(), **recorded_series(), **PROMETHEUS_SERIES}


def test_dashboards_and_rules_name_only_exported_metrics(known: dict[str, set[str] | None]) -> None:
    expressions = dashboard_expressions() + rule_expressions()
    assert len(expressions) > 40
    problems = [f"{where}: {p}" for where, expr in expressions for p in unknown_names(expr, known)]
    assert problems == []


def test_rule_test_series_are_exported_metrics(known: dict[str, set[str] | None]) -> None:
    problems = []
    for path in sorted((PROMETHEUS / "tests").glob("*.yml")):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for series in case["input_series"]:
                problems += [f"{case['name']}: {p}" for p in unknown_names(series["series"], known)]
    assert problems == []


def zero_started_specs() -> dict[str, LabelSpec]:
    """Sample name -> what its labels start at 0 with (``ServiceMetrics`` of every service)."""
    specs: dict[str, LabelSpec] = {}
    for metrics in all_service_metrics():
        specs.update(metrics.specs)
    return specs


def test_rule_tests_start_at_zero_only_series_the_services_export_at_zero() -> None:
    """A promtool series that starts at 0 proves an alert fires on the first event only if the
    service really exports that series at 0 before its first event; else the test flatters the rule
    (the series would appear at 1, and ``increase()`` would see nothing). A label value that comes
    off the wire (a station in a verdict) is prepared at its first event: that event's own series
    starts at 1, the others of that value at 0, so such a case needs one series of the value not
    starting at 0."""
    specs = zero_started_specs()
    problems = []
    checked = 0
    for path in sorted((PROMETHEUS / "tests").glob("*.yml")):
        for case in yaml.safe_load(path.read_text())["tests"]:
            zero_started: list[tuple[str, Selector, LabelSpec]] = []
            first_events: set[tuple[str, str, str]] = set()  # (metric, label, value) seen at >0 first
            for series in case["input_series"]:
                starts_at_zero = re.match(r"^0(\D|$)", str(series["values"]).split()[0]) is not None
                for selector in selectors(series["series"]):
                    spec = specs.get(selector.metric)
                    if spec is None:
                        continue
                    if starts_at_zero:
                        zero_started.append((series["series"], selector, spec))
                    else:
                        first_events |= {(selector.metric, k, v) for k, v in selector.matchers.items()}
            for text, selector, spec in zero_started:
                checked += 1
                for label, value in selector.matchers.items():
                    if label not in spec.declared or spec.starts_at_zero(label, value):
                        continue
                    if spec.declared[label] == () and (selector.metric, label, value) in first_events:
                        continue  # a wire value, prepared by its first event (another series here)
                    problems.append(f"{case['name']}: {text} ({label}={value})")
    assert checked > 0
    assert problems == []


def test_the_checker_sees_through_promql() -> None:
    expr = (
        'sum by (product_class) (rate(a_total{decision="reject", x=~"y|z"}[5m] offset 1h)) '
        "/ ignoring (decision) group_left sum(rate(b_total[$__rate_interval])) > 0.5 "
        "and on (product_class) histogram_quantile(0.99, sum by (le) (rate(c_bucket[5m:30s]))) "
        'or lineguard:rec:15m * 2 unless absent(up{job="s"})'
    )
    found = {s.metric: s.labels for s in selectors(expr)}
    assert found == {
        "a_total": {"decision", "x"},
        "b_total": set(),
        "c_bucket": set(),
        "lineguard:rec:15m": set(),
        "up": {"job"},
    }
    known: dict[str, set[str] | None] = {"a_total": {"decision"}, "b_total": set(), "up": set()}
    assert unknown_names(expr, known) == [
        "a_total has no label x",
        "metric c_bucket is not exported",
        "metric lineguard:rec:15m is not exported",
    ]
    with pytest.raises(PromQLSyntaxError):
        selectors("sum(rate(x[5m])")


def test_suffixes_follow_the_metric_types(known: dict[str, set[str] | None]) -> None:
    assert "lineguard_scorer_verdicts_total" in known and "lineguard_scorer_verdicts" not in known
    assert {"lineguard_scorer_end_to_end_seconds_bucket", "lineguard_scorer_end_to_end_seconds_count"} <= set(
        known
    )
    assert known["lineguard_scorer_end_to_end_seconds_bucket"] == {"le"}
    assert known["lineguard_scorer_verdicts_total"] == {"product_class", "decision", "station_id"}
    assert known["lineguard_scorer_model_info"] is None


def test_dashboard_files_are_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("generate_dashboards", GRAFANA / "generate_dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in module.DASHBOARDS:
        assert (GRAFANA / "dashboards" / name).read_text() == module.render(name), f"regenerate {name}"


def test_dashboards_use_the_provisioned_datasource_and_are_well_formed() -> None:
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/lineguard.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    uids = set()
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == uid and panel["targets"], panel["title"]
            assert panel["gridPos"]["x"] >= 0 and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    assert uids == {"lineguard-line", "lineguard-model", "lineguard-explainer", "lineguard-services"}


def test_every_exported_metric_is_on_a_dashboard_or_in_a_rule() -> None:
    used = set()
    for _, expr in dashboard_expressions() + rule_expressions():
        used |= {re.sub(r"_(total|bucket|count|sum|info)$", "", s.metric) for s in selectors(expr)}
    unseen = [
        family.name
        for metrics in all_service_metrics()
        for family in metrics.registry.collect()
        if not family.name.startswith(("process_", "python_")) and family.name not in used
    ]
    assert unseen == []


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_is_required_tested_and_in_the_runbook() -> None:
    alerts = {r["alert"]: r for g in rule_groups() for r in g["rules"] if "alert" in r}
    required = {
        "LineguardScorerDown",
        "LineguardConsumerLagGrowing",
        "LineguardLatencyAboveDeadline",
        "LineguardLateVerdicts",
        "LineguardDefectRateSpike",
        "LineguardUnknownProductRate",
        "LineguardDeadLetters",
        "LineguardExplainerFailing",
        "LineguardVlmBudgetNearlySpent",
    }
    assert required <= set(alerts)
    fired = set()
    for path in sorted((PROMETHEUS / "tests").glob("*.yml")):
        for case in yaml.safe_load(path.read_text())["tests"]:
            fired |= {t["alertname"] for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    assert set(alerts) - fired == set(), "alerts without a promtool test that makes them fire"
    anchors = {_slug(m) for m in re.findall(r"^#+\s+(.+)$", RUNBOOK.read_text(), re.MULTILINE)}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        link = rule["annotations"]["runbook"]
        assert link == f"docs/operations.md#{name.lower()}" and name.lower() in anchors, name


def test_prometheus_scrapes_every_service_and_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"lineguard-scorer", "lineguard-explainer", "lineguard-plc-bridge", "lineguard-alerts"} <= jobs
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (make rules-test installs it)"
)
def test_promtool_accepts_the_config_and_rules(tmp_path: Path) -> None:
    # The rules' unit tests (promtool test rules) run in `make rules-test`, part of `make test`.
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["rule_files"] = [str(PROMETHEUS / "rules" / "*.yml")]  # where compose mounts them
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    rules = [str(p) for p in sorted((PROMETHEUS / "rules").glob("*.yml"))]
    for args in (["check", "config", str(tmp_path / "prometheus.yml")], ["check", "rules", *rules]):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
