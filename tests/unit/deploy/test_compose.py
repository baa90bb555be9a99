"""docker-compose.yml against the code (Docker cannot run here): commands, settings, ports, topics."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from services.cli import build_parser
from shared.kafka.topics import KAFKA_MAX_MESSAGE_BYTES
from shared.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PROMETHEUS = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
DATASOURCES = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
PROVIDERS = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/lineguard.yml").read_text())
DOCKERFILE = (ROOT / "deploy/docker/Dockerfile").read_text()
_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def lineguard_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in SERVICES.items() if s.get("image", "").startswith("lineguard:")}


def resolve(value: Any) -> str:
    """A compose value with ${VAR:-default} replaced by its default (what runs when nothing is set)."""
    return _VAR.sub(lambda m: m.group(2) or "", str(value))


def env(service: dict[str, Any]) -> dict[str, str]:
    return {k: resolve(v) for k, v in (service.get("environment") or {}).items()}


def setting_field(variable: str) -> Any:
    """The pydantic field a LINEGUARD_ variable sets, or None."""
    path = variable[len(ENV_PREFIX) :].lower().split("__")
    model: Any = Settings
    found = None
    for part in path:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        found = model.model_fields[part]
        model = found.annotation
    return found


def test_lineguard_services_run_real_cli_commands() -> None:
    parser = build_parser()
    services = lineguard_services()
    assert {
        "topics",
        "scorer",
        "explainer",
        "plc-bridge",
        "alerts",
        "console",
        "camera-sim",
        "plc-sim",
    } <= set(services)
    for name, service in services.items():
        command = [resolve(part) for part in service["command"]]
        try:
            args = parser.parse_args(command)
        except SystemExit:
            pytest.fail(f"{name}: `lineguard {' '.join(command)}` is not a valid command")
        assert callable(args.handler), name
    assert 'ENTRYPOINT ["lineguard"]' in DOCKERFILE


def test_every_lineguard_variable_is_a_real_setting_with_a_valid_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, service in SERVICES.items():
        variables = {k: v for k, v in env(service).items() if k.startswith(ENV_PREFIX)}
        for variable in variables:
            assert setting_field(variable) is not None, f"{name}: {variable} is not a setting"
        if name not in lineguard_services():
            continue
        for variable in [v for v in os.environ if v.startswith(ENV_PREFIX)]:
            monkeypatch.delenv(variable)
        for variable, value in variables.items():
            monkeypatch.setenv(variable, value)
        load_settings()  # raises ConfigError on a bad value


def test_the_settings_checker_refuses_unknown_variables() -> None:
    assert setting_field("LINEGUARD_SCORER__MAX_BATCH") is not None
    assert setting_field("LINEGUARD_PLC_BRIDGE__MODBUS_PORT") is not None
    assert setting_field("LINEGUARD_SCORER__NO_SUCH_THING") is None
    assert setting_field("LINEGUARD_METRICS_PORT__X") is None
    assert setting_field("LINEGUARD_NOPE") is None


def test_metrics_port_matches_prometheus_healthchecks_and_dockerfile() -> None:
    jobs = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}
    scraped = {
        "scorer": jobs["lineguard-scorer"]["dns_sd_configs"][0],
        "explainer": jobs["lineguard-explainer"]["static_configs"][0],
        "plc-bridge": jobs["lineguard-plc-bridge"]["static_configs"][0],
        "alerts": jobs["lineguard-alerts"]["static_configs"][0],
        "console": jobs["lineguard-console"]["static_configs"][0],
    }
    for name, target in scraped.items():
        port = int(env(SERVICES[name])["LINEGUARD_METRICS_PORT"])
        if "names" in target:  # DNS discovery of the scaled service
            assert target["names"] == [name] and target["port"] == port
        else:
            assert target["targets"] == [f"{name}:{port}"]
        check = " ".join(SERVICES[name]["healthcheck"]["test"])
        # The scorer's health is progress (/healthz on the metrics port), the others' the endpoint.
        assert f"localhost:{port}/{'healthz' if name == 'scorer' else 'metrics'}" in check, name
        assert f"EXPOSE {port}" in DOCKERFILE


def test_kafka_listeners_bootstrap_and_message_size_match_the_code() -> None:
    kafka = SERVICES["kafka"]
    kenv = env(kafka)
    pom = (ROOT / "deploy/kafka/pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert version is not None and kafka["image"] == f"apache/kafka:{version.group(1)}"
    assert "broker" in kenv["KAFKA_PROCESS_ROLES"] and "controller" in kenv["KAFKA_PROCESS_ROLES"]
    listeners = dict(item.split("://") for item in kenv["KAFKA_ADVERTISED_LISTENERS"].split(","))
    for name, service in lineguard_services().items():
        bootstrap = env(service)["LINEGUARD_KAFKA_BOOTSTRAP"]
        assert listeners["PLAINTEXT"] == bootstrap, name
        host, port = bootstrap.split(":")
        assert host == "kafka" and f"PLAINTEXT://:{port}" in kenv["KAFKA_LISTENERS"]
    external_port = listeners["EXTERNAL"].split(":")[1]
    assert f"{external_port}:{external_port}" in kafka["ports"]
    assert int(kenv["KAFKA_MESSAGE_MAX_BYTES"]) == KAFKA_MAX_MESSAGE_BYTES
    assert int(kenv["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= KAFKA_MAX_MESSAGE_BYTES


def test_topics_are_made_by_the_code_before_any_service_starts() -> None:
    topics = SERVICES["topics"]
    assert topics["command"][:2] == ["topics", "ensure"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    partitions = int(resolve(topics["command"][topics["command"].index("--frames-partitions") + 1]))
    assert partitions >= SERVICES["scorer"]["deploy"]["replicas"], "more scorers than frames partitions idle"
    for name, service in lineguard_services().items():
        if name in ("topics", "plc-sim"):
            continue
        assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully", name
        prefix = env(service)["LINEGUARD_TOPIC_PREFIX"]
        assert Settings(topic_prefix=prefix).topic("verdicts") == f"{prefix}.verdicts"


def test_plc_bridge_points_at_the_simulated_plc() -> None:
    bridge, sim = env(SERVICES["plc-bridge"]), SERVICES["plc-sim"]
    command = sim["command"]
    modbus_port = command[command.index("--modbus-port") + 1]
    opcua_port = command[command.index("--opcua-port") + 1]
    assert bridge["LINEGUARD_PLC_BRIDGE__MODBUS_HOST"] == "plc-sim"
    assert bridge["LINEGUARD_PLC_BRIDGE__MODBUS_PORT"] == modbus_port
    url = urlsplit(bridge["LINEGUARD_PLC_BRIDGE__OPCUA_URL"])
    assert (url.hostname, str(url.port)) == ("plc-sim", opcua_port)
    stations = command[command.index("--stations") + 1].split(",")
    assert yaml.safe_load(bridge["LINEGUARD_PLC_BRIDGE__STATIONS"]) == stations
    assert sim["profiles"] == ["plc-sim"] and SERVICES["camera-sim"]["profiles"] == ["camera"]


def test_prometheus_and_grafana_are_provisioned_from_the_repository() -> None:
    prom = SERVICES["prometheus"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in prom["volumes"] if m.startswith("./")}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    assert PROMETHEUS["rule_files"] == [
        mounts["/etc/prometheus/rules"].replace("./deploy/prometheus", "/etc/prometheus") + "/*.yml"
    ]
    url = urlsplit(DATASOURCES["datasources"][0]["url"])
    assert url.hostname == "prometheus" and f"{url.port}:{url.port}" in prom["ports"]
    grafana = SERVICES["grafana"]
    gmounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"] if m.startswith("./")}
    assert gmounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    assert gmounts[PROVIDERS["providers"][0]["options"]["path"]] == "./deploy/grafana/dashboards"
    home = env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "deploy/grafana/dashboards" / Path(home).name).exists()
    for name, source in {**mounts, **gmounts}.items():
        assert (ROOT / source).exists(), name


def test_volumes_secrets_and_health_checks() -> None:
    scorer, explainer = SERVICES["scorer"], SERVICES["explainer"]
    assert any(v.startswith("models:/models") for v in scorer["volumes"])
    assert env(scorer)["LINEGUARD_SCORER__MODEL_DIR"].startswith("/models/")
    report_dir = env(explainer)["LINEGUARD_EXPLAINER__REPORT_DIR"]
    assert f"reports:{report_dir}" in explainer["volumes"]
    declared = set(COMPOSE["volumes"])
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith("./") or source in declared, volume
        for secret in service.get("secrets", []):
            assert secret in COMPOSE["secrets"]
    for name in (
        "kafka",
        "scorer",
        "explainer",
        "plc-bridge",
        "alerts",
        "console",
        "plc-sim",
        "prometheus",
        "grafana",
    ):
        check = SERVICES[name]["healthcheck"]
        assert not check.get("disable") and check["test"][0] in ("CMD", "CMD-SHELL"), name
    secret_env = {
        "explainer": "LINEGUARD_EXPLAINER__API_KEY_FILE",
        "alerts": "LINEGUARD_ALERTS__WEBHOOK_URL_FILE",
        "console": "LINEGUARD_CONSOLE__TOKEN_FILE",
    }
    for name, variable in secret_env.items():
        (secret,) = SERVICES[name]["secrets"]
        assert env(SERVICES[name])[variable] == f"/run/secrets/{secret}"


def test_the_console_reads_the_explainers_report_store_and_publishes_its_port() -> None:
    console, explainer = env(SERVICES["console"]), env(SERVICES["explainer"])
    assert console["LINEGUARD_EXPLAINER__REPORT_DIR"] == explainer["LINEGUARD_EXPLAINER__REPORT_DIR"]
    report_dir = console["LINEGUARD_EXPLAINER__REPORT_DIR"]
    assert f"reports:{report_dir}:ro" in SERVICES["console"]["volumes"]
    assert console["LINEGUARD_CONSOLE__HOST"] == "0.0.0.0"
    port = console["LINEGUARD_CONSOLE__PORT"]
    assert any(resolve(mapping).endswith(f":{port}") for mapping in SERVICES["console"]["ports"])
    frames = console["LINEGUARD_LABELS__FRAMES_DIR"]
    assert f"frames:{frames}" in SERVICES["console"]["volumes"]


def test_dockerfile_copies_what_exists() -> None:
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                if "[" not in source:  # globs may match nothing (README.m[d])
                    assert (ROOT / source).exists(), source


def test_every_compose_variable_is_documented() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    variables = {m.group(1) for m in _VAR.finditer(text)}
    runbook = (ROOT / "docs/operations.md").read_text()
    assert variables and [v for v in sorted(variables) if v not in runbook] == []
