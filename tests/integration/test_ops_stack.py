"""The live operations stack: a real Prometheus scrapes the real services, the dashboards' queries run
against it, an alert rule fires on a provoked condition and Alertmanager delivers it to a webhook;
the services' traces go over OTLP/HTTP to a real receiver.

The line: ``camera-sim`` -> ``scorer`` -> ``explainer`` (fallback reports, no VLM), ``alerts``
(log-only), and the ``plc-bridge`` writing to a Modbus PLC simulator, each a real ``lineguard``
process with its metrics port. Prometheus runs deploy/prometheus/prometheus.yml (targets swapped for
these ports) with the real rules. The provoked condition is the one that stayed silent before every
labelled counter existed at 0: the bridge's first fail-safe reject (a tracked part whose verdict
never comes), which must fire ``LineguardPlcFailSafe`` and reach the webhook through Alertmanager.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from services.plc_bridge.simulators import ModbusPlcSimulator
from shared.kafka.broker import free_ports
from shared.settings import Settings
from tests.support.line import LineModels, camera_sim_args, offline_explainer_env, scorer_settings
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.processes import REPO_ROOT, ServiceProcess, service_env
from tests.support.prometheus_stack import ops_stack
from tests.support.promql import selectors
from tests.support.waiting import wait_until
from tests.support.webhook_server import WebhookServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

READY_S = 120.0  # torch's cold start on a busy two-core machine
DASHBOARDS = REPO_ROOT / "deploy" / "grafana" / "dashboards"
# What Grafana substitutes in the dashboards' queries, for a 1 s scrape interval.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "5s", "$__range": "5m"}
STATION = "st-x"  # the PLC bridge's one station; the camera simulator's verdicts are for others


# Services whose panels are empty here because this line does not run them (their own integration
# tests do: test_camera_gateway.py, test_console_browser.py, the shadow and loop tests); the camera
# simulator stands in for the gateway, nobody browses the console, no candidate model is shadowed.
NOT_RUN_HERE = ("lineguard_camera_gateway_", "lineguard_console_", "lineguard_shadow_", "lineguard_loop_")


def not_run_here() -> set[str]:
    """The panels that name only metrics of the services in NOT_RUN_HERE."""
    return {
        where
        for where, expr in dashboard_queries()
        if all(s.metric.startswith(NOT_RUN_HERE) for s in selectors(expr))
    }


def dashboard_queries() -> list[tuple[str, str]]:
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                found.append((f"{path.name}: {panel['title']}", expr))
    return found


def test_dashboard_queries_use_only_the_variables_the_test_substitutes() -> None:
    for where, expr in dashboard_queries():
        assert not re.search(r"\$\w+", expr), f"{where}: {expr}"


async def test_prometheus_scrapes_the_line_and_an_alert_reaches_the_webhook_through_alertmanager(
    kafka_settings: Settings, line_models: LineModels, tmp_path: Path
) -> None:
    settings = scorer_settings(kafka_settings)
    prefix = settings.topic_prefix
    jobs = ("scorer", "explainer", "plc-bridge", "alerts")
    modbus_port, *job_ports = free_ports(1 + len(jobs))
    modbus = ModbusPlcSimulator(port=modbus_port)
    await modbus.start()
    ports = dict(zip(jobs, job_ports, strict=True))
    processes: list[ServiceProcess] = []

    def start(
        args: list[str], job: str | None, env: dict[str, str], receiver: OtlpReceiver
    ) -> ServiceProcess:
        env = {**env, **receiver.exporter_env(500)}
        if job is not None:
            env["LINEGUARD_METRICS_PORT"] = str(ports[job])
        process = ServiceProcess(args, env, tmp_path / f"{args[0]}.log")
        processes.append(process)
        return process

    try:
        with WebhookServer() as webhook, OtlpReceiver() as receiver:
            scorer = start(
                ["scorer", "--model", str(line_models.a)], "scorer", service_env(settings, "scorer"), receiver
            )
            explainer = start(
                ["explainer"], "explainer", offline_explainer_env(settings, tmp_path / "reports"), receiver
            )
            bridge = start(
                ["plc-bridge"],
                "plc-bridge",
                service_env(
                    settings,
                    "scorer",
                    plc_bridge={
                        "group_id": f"{prefix}-plc",
                        "stations": [STATION],
                        "modbus_host": "127.0.0.1",
                        "modbus_port": modbus.port,
                        "part_deadline_ms": 500,
                        "poll_interval_ms": 20,
                        "scorer_timeout_s": 600,
                    },
                ),
                receiver,
            )
            alerts = start(
                ["alerts"],
                "alerts",
                service_env(
                    settings,
                    alerts={"group_id": f"{prefix}-alerts", "state_dir": str(tmp_path / "alerts-state")},
                ),
                receiver,
            )
            await scorer.wait_for_event("partitions_assigned", READY_S)
            await explainer.wait_for_event("explainer_started", READY_S)
            await alerts.wait_for_log("alerts forwarder ready", READY_S)
            await bridge.wait_for_log("plc bridge ready", READY_S)
            start(  # the cameras, last: every consumer is ready
                camera_sim_args(
                    *("--pool", "16", "--rate", "4", "--count", "0", "--defect-rate", "0.5"),
                    *("--deadline-ms", "5000", "--hint"),
                ),
                None,
                service_env(settings),
                receiver,
            )
            targets = {
                "lineguard-scorer": f"127.0.0.1:{ports['scorer']}",
                "lineguard-explainer": f"127.0.0.1:{ports['explainer']}",
                "lineguard-plc-bridge": f"127.0.0.1:{ports['plc-bridge']}",
                "lineguard-alerts": f"127.0.0.1:{ports['alerts']}",
            }
            with ops_stack(tmp_path / "ops", targets, webhook.url) as stack:
                await wait_until(
                    lambda: set(stack.targets().values()) == {"up"} and len(stack.targets()) == len(targets),
                    timeout=60,
                    what=f"every target up: {targets}",
                )
                # The first fail-safe's series is scraped at 0 before the fail-safe: increase() sees it.
                fail_safe = (
                    f'lineguard_plc_bridge_fail_safes_total{{station_id="{STATION}", cause="part_deadline"}}'
                )
                await wait_until(lambda: stack.values(fail_safe) and stack.values(fail_safe)[0][1] == 0.0, 30)
                await modbus.trigger_part(0)  # a part enters station 0; no verdict comes for it

                def firing() -> list[dict[str, Any]]:
                    return [
                        a
                        for a in stack.alerts()
                        if a["labels"]["alertname"] == "LineguardPlcFailSafe" and a["state"] == "firing"
                    ]

                (alert,) = await wait_until(firing, timeout=60, what="LineguardPlcFailSafe firing")
                assert (alert["labels"]["station_id"], alert["labels"]["cause"]) == (STATION, "part_deadline")

                def delivered() -> list[dict[str, Any]]:
                    return [
                        a
                        for body in webhook.delivered()
                        for a in body["alerts"]
                        if a["labels"]["alertname"] == "LineguardPlcFailSafe" and a["status"] == "firing"
                    ]

                (sent,) = await wait_until(delivered, timeout=60, what="the alert at the webhook")
                assert sent["labels"]["station_id"] == STATION
                assert sent["annotations"]["runbook"] == "docs/operations.md#lineguardplcfailsafe"

                # The line has run: verdicts scored and reports written, as Prometheus sees them.
                await wait_until(
                    lambda: stack.values("sum(lineguard_scorer_verdicts_total)")[0][1] >= 10,
                    timeout=READY_S,
                    what="verdicts scraped",
                )
                await wait_until(
                    lambda: stack.values("sum(lineguard_explainer_reports_total)")[0][1] >= 1,
                    timeout=READY_S,
                    what="reports scraped",
                )
                errors, empty = [], []
                for where, expr in dashboard_queries():
                    answer = stack.query(expr)
                    if answer["status"] != "success":
                        errors.append(f"{where}: {answer.get('error')}")
                    elif not answer["data"]["result"]:
                        empty.append(where)
                assert errors == [], "\n".join(errors)
                # Every panel of a service that runs here has data: counters exist at 0, histograms
                # answer NaN before their first observation (a result, shown as no value), gauges
                # are set at start. The others are legitimately empty: see NOT_RUN_HERE.
                unexplained = [where for where in empty if where not in not_run_here()]
                assert unexplained == [], f"{len(unexplained)} queries empty: {unexplained}"
            for process in processes:  # a clean stop flushes the spans still batched
                code = await process.terminate()
                assert code == 0, f"{process} exit {code}:\n{process.log_tail()}"
            spans = receiver.received()
    finally:
        for process in processes:
            process.kill()
        await modbus.stop()

    by_service: dict[str, list[Any]] = {}
    for span in spans:
        by_service.setdefault(span.service, []).append(span)
    assert {"camera-sim", "scorer", "explainer"} <= set(by_service), sorted(by_service)
    captured = {s.trace_id for s in by_service["camera-sim"]}
    linked = {trace for s in by_service["scorer"] for trace in s.links}
    assert captured & linked, "no scorer span links to a camera frame's trace"
