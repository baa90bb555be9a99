"""docker-compose.yml against the code (Docker cannot run here): commands, settings, ports, security."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from services.cli import build_parser
from shared.kafka.topics import KAFKA_MAX_MESSAGE_BYTES
from shared.settings import ENV_PREFIX, PlcBridgeSettings, Settings, load_settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PROMETHEUS = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
DATASOURCES = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
PROVIDERS = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/lineguard.yml").read_text())
DOCKERFILE = (ROOT / "deploy/docker/Dockerfile").read_text()
BROKER_PROPS = dict(
    line.split("=", 1)
    for line in (ROOT / "deploy/kafka/server-secure.properties").read_text().splitlines()
    if "=" in line and not line.startswith("#")
)
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


def secrets_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's compose secrets: mount name (under /run/secrets) -> secret."""
    mounts: dict[str, str] = {}
    for secret in service.get("secrets", []):
        if isinstance(secret, str):
            mounts[secret] = secret
        else:
            mounts[secret.get("target", secret["source"])] = secret["source"]
    return mounts


def secret_file(secret: str) -> str:
    return resolve(COMPOSE["secrets"][secret]["file"])


def kafka_clients() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in lineguard_services().items() if "LINEGUARD_KAFKA_BOOTSTRAP" in env(s)}


# Which principal each Kafka client service acts as (shared/kafka/principals.py).
SERVICE_PRINCIPALS = {
    "topics": "admin",
    "scorer": "scorer",
    "explainer": "explainer",
    "plc-bridge": "plc-bridge",
    "alerts": "alerts",
    "camera-sim": "camera",
    "operator": "operator",
    "shadow": "shadow",
    "refit-check": "refit-check",
    "console": "console",
}


def test_kafka_is_sasl_ssl_for_clients_mutual_tls_inside_and_publishes_nothing_in_plaintext() -> None:
    kafka = SERVICES["kafka"]
    pom = (ROOT / "deploy/kafka/pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert version is not None and kafka["image"] == f"apache/kafka:{version.group(1)}"
    # The broker runs the repository's configuration file, formatted with it first.
    mounts = {m.split(":")[1]: m.split(":")[0] for m in kafka["volumes"] if m.startswith("./")}
    assert mounts["/etc/lineguard/server.properties"] == "./deploy/kafka/server-secure.properties"
    command = " ".join(kafka["command"])
    assert (
        "kafka-storage.sh format" in command
        and "kafka-server-start.sh /etc/lineguard/server.properties" in command
    )
    assert "broker" in BROKER_PROPS["process.roles"] and "controller" in BROKER_PROPS["process.roles"]
    protocols = dict(item.split(":") for item in BROKER_PROPS["listener.security.protocol.map"].split(","))
    assert "PLAINTEXT" not in protocols.values() and "SASL_PLAINTEXT" not in protocols.values()
    assert protocols["CLIENT"] == protocols["EXTERNAL"] == "SASL_SSL"
    assert protocols["INTERNAL"] == protocols["CONTROLLER"] == "SSL"
    for listener in ("internal", "controller"):
        assert BROKER_PROPS[f"listener.name.{listener}.ssl.client.auth"] == "required"
    advertised = dict(item.split("://") for item in BROKER_PROPS["advertised.listeners"].split(","))
    for name, service in kafka_clients().items():
        if name == "kafka-setup":
            continue
        variables = env(service)
        assert variables["LINEGUARD_KAFKA_BOOTSTRAP"] == advertised["CLIENT"], name
        assert variables["LINEGUARD_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL", name
    # Published: the SASL_SSL listener for host tools, on localhost only; nothing else of Kafka.
    external_port = advertised["EXTERNAL"].split(":")[1]
    assert kafka["ports"] == [f"127.0.0.1:{external_port}:{external_port}"]
    assert advertised["EXTERNAL"].split(":")[0] == "localhost"
    assert int(BROKER_PROPS["message.max.bytes"]) == KAFKA_MAX_MESSAGE_BYTES
    assert int(BROKER_PROPS["replica.fetch.max.bytes"]) >= KAFKA_MAX_MESSAGE_BYTES


def test_the_compose_broker_secures_itself_like_the_local_secure_broker(tmp_path: Path) -> None:
    from shared.kafka.broker import BrokerTls, LocalBroker
    from shared.settings import BrokerSettings

    local = LocalBroker(
        BrokerSettings(data_dir=tmp_path), tls=BrokerTls(tmp_path / "k.pem", tmp_path / "ca.pem")
    )
    expected = dict(line.split("=", 1) for line in local.server_properties().splitlines() if "=" in line)
    for key in (
        "authorizer.class.name",
        "allow.everyone.if.no.acl.found",
        "super.users",
        "ssl.principal.mapping.rules",
        "sasl.enabled.mechanisms",
        "ssl.enabled.protocols",
        "ssl.endpoint.identification.algorithm",
        "ssl.keystore.type",
        "ssl.truststore.type",
        "inter.broker.listener.name",
        "controller.listener.names",
        "listener.name.client.scram-sha-512.sasl.jaas.config",
        "listener.name.client.scram-sha-256.sasl.jaas.config",
    ):
        assert BROKER_PROPS[key] == expected[key], key
    for mechanism in ("scram-sha-512", "scram-sha-256"):
        key = f"listener.name.external.{mechanism}.sasl.jaas.config"
        assert BROKER_PROPS[key] == expected[f"listener.name.client.{mechanism}.sasl.jaas.config"]
    # Its key store and trust store are the compose secrets it mounts, made by kafka-init.
    kafka = secrets_of(SERVICES["kafka"])
    assert BROKER_PROPS["ssl.keystore.location"] == "/run/secrets/kafka_broker_keystore"
    assert BROKER_PROPS["ssl.truststore.location"] == "/run/secrets/kafka_ca"
    assert kafka == {"kafka_ca": "kafka_ca", "kafka_broker_keystore": "kafka_broker_keystore"}
    secrets_dir = "${LINEGUARD_SECRETS_DIR:-./secrets}/kafka"
    assert COMPOSE["secrets"]["kafka_ca"]["file"] == f"{secrets_dir}/ca.pem"
    assert COMPOSE["secrets"]["kafka_broker_keystore"]["file"] == f"{secrets_dir}/broker.pem"
    health = SERVICES["kafka"]["healthcheck"]["test"][1]
    assert "--bootstrap-server kafka:9094" in health and "healthcheck.properties" in health
    probe = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy/kafka/healthcheck.properties").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert (
        probe["security.protocol"] == "SSL"
        and probe["ssl.keystore.location"] == BROKER_PROPS["ssl.keystore.location"]
    )


def test_every_kafka_client_is_its_own_principal_with_only_its_own_password() -> None:
    from shared.kafka.principals import PRINCIPAL_NAMES

    clients = {n: s for n, s in kafka_clients().items() if n != "kafka-setup"}
    assert set(clients) == set(SERVICE_PRINCIPALS)
    password_users: dict[str, list[str]] = {}
    for name, service in clients.items():
        variables, mounts = env(service), secrets_of(service)
        principal = SERVICE_PRINCIPALS[name]
        assert principal in PRINCIPAL_NAMES
        assert variables["LINEGUARD_KAFKA__SASL_USERNAME"] == principal, name
        assert variables["LINEGUARD_KAFKA__SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert variables["LINEGUARD_KAFKA__SASL_PASSWORD_FILE"] == "/run/secrets/kafka_password"
        assert variables["LINEGUARD_KAFKA__SSL_CA_FILE"] == "/run/secrets/kafka_ca"
        assert mounts["kafka_ca"] == "kafka_ca"
        password_secret = mounts["kafka_password"]
        assert secret_file(password_secret).endswith(f"/kafka/passwords/{principal}"), name
        assert not [
            m for m in mounts.values() if m.startswith("kafka_") and m not in ("kafka_ca", password_secret)
        ]
        password_users.setdefault(password_secret, []).append(name)
    assert all(len(users) == 1 for users in password_users.values()), password_users
    assert "LINEGUARD_KAFKA_BOOTSTRAP" not in env(SERVICES["plc-sim"])  # no Kafka, no credentials


def test_the_secrets_are_made_once_and_the_principals_provisioned_before_topics() -> None:
    init, setup, kafka = SERVICES["kafka-init"], SERVICES["kafka-setup"], SERVICES["kafka"]
    parser = build_parser()
    args = parser.parse_args([resolve(part) for part in init["command"]])
    assert init["profiles"] == ["init"] and args.out == Path("/secrets/kafka")
    advertised = dict(item.split("://") for item in BROKER_PROPS["advertised.listeners"].split(","))
    hosts = {address.rsplit(":", 1)[0] for address in advertised.values()}
    assert hosts <= set(args.hostname), "the broker certificate must name every advertised host"
    assert (args.broker_uid, args.service_uid) == (1000, 10001)  # apache/kafka's appuser; the Dockerfile's
    assert "--uid 10001" in DOCKERFILE
    assert f"{resolve(COMPOSE['secrets']['kafka_ca']['file']).rsplit('/', 1)[0]}:/secrets/kafka" in [
        resolve(v) for v in init["volumes"]
    ]
    args = parser.parse_args([resolve(part) for part in setup["command"]])
    assert args.kafka_action == "provision" and args.secrets == Path("/secrets/kafka")
    variables = env(setup)
    assert variables["LINEGUARD_KAFKA_BOOTSTRAP"] == advertised["INTERNAL"]
    assert variables["LINEGUARD_KAFKA__SECURITY_PROTOCOL"] == "SSL"
    assert variables["LINEGUARD_KAFKA__SSL_CERT_FILE"] == "/secrets/kafka/broker.pem"
    assert setup["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert SERVICES["topics"]["depends_on"]["kafka-setup"]["condition"] == "service_completed_successfully"
    assert "KAFKA_CLUSTER_ID" in env(kafka) and "$$KAFKA_CLUSTER_ID" in " ".join(kafka["command"])


def test_topics_are_made_by_the_code_before_any_service_starts() -> None:
    topics = SERVICES["topics"]
    assert topics["command"][:2] == ["topics", "ensure"]
    assert topics["depends_on"]["kafka-setup"]["condition"] == "service_completed_successfully"
    partitions = int(resolve(topics["command"][topics["command"].index("--frames-partitions") + 1]))
    assert partitions >= SERVICES["scorer"]["deploy"]["replicas"], "more scorers than frames partitions idle"
    for name, service in lineguard_services().items():
        if name in ("topics", "plc-sim", "kafka-init", "kafka-setup", "claims-gc"):  # no Kafka
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


def test_the_plc_bridges_ledger_outlives_its_container() -> None:
    ledger_path = PlcBridgeSettings().ledger_path  # relative: under the image's WORKDIR
    assert not ledger_path.is_absolute()
    assert "LINEGUARD_PLC_BRIDGE__LEDGER_PATH" not in env(SERVICES["plc-bridge"])
    (workdir,) = re.findall(r"^WORKDIR (\S+)", DOCKERFILE, re.MULTILINE)
    (mount,) = [v for v in SERVICES["plc-bridge"]["volumes"] if v.startswith("plc-bridge-state:")]
    assert PurePosixPath(mount.split(":")[1]) in (PurePosixPath(workdir) / ledger_path).parents


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
            source = resolve(volume).split(":")[0]
            assert source.startswith("./") or source in declared, volume
        for secret in secrets_of(service).values():
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
        "alertmanager",
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
        mounted = [m for m in secrets_of(SERVICES[name]) if not m.startswith("kafka_")]
        assert [env(SERVICES[name])[variable]] == [f"/run/secrets/{m}" for m in mounted]


def test_prometheus_sends_its_alerts_to_the_composed_alertmanager() -> None:
    am = SERVICES["alertmanager"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in am["volumes"] if m.startswith("./")}
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in am["command"]
    assert (ROOT / mounts["/etc/alertmanager/alertmanager.yml"]).is_file()
    managers = PROMETHEUS["alerting"]["alertmanagers"]
    (target,) = [t for a in managers for s in a["static_configs"] for t in s["targets"]]
    host, port = target.split(":")
    assert host == "alertmanager" and f"{port}:{port}" in am["ports"]


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not installed (`make ops-tools`)")
def test_amtool_accepts_the_shipped_alertmanager_config() -> None:
    result = subprocess.run(
        ["amtool", "check-config", str(ROOT / "deploy/alertmanager/alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


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


def test_scorers_trust_the_public_half_of_the_key_the_operator_signs_with() -> None:
    operator, scorer = SERVICES["operator"], SERVICES["scorer"]
    assert "--signing-key" in operator["command"]
    signing_mount = operator["command"][operator["command"].index("--signing-key") + 1]
    private = secret_file(secrets_of(operator)[signing_mount.removeprefix("/run/secrets/")])
    trusted = env(scorer)["LINEGUARD_SCORER__TRUSTED_KEYS"]
    public = secret_file(secrets_of(scorer)[trusted.removeprefix("/run/secrets/")])
    # `lineguard model keygen --name N` writes N.key and N.pub; the docs rename N.key to N.
    assert public == private + ".pub"
    # promote and rollback (no --signing-key) sign with the same key.
    assert env(operator)["LINEGUARD_PROMOTION__SIGNING_KEY"] == signing_mount


def test_every_long_running_container_rotates_its_logs() -> None:
    for name, service in SERVICES.items():
        if service.get("restart") == "no":
            continue  # one-shot jobs
        logging = service.get("logging")
        assert logging is not None, name
        assert logging["driver"] == "json-file" and logging["options"]["max-size"], name
        assert int(logging["options"]["max-file"]) >= 1, name


def test_the_claim_check_store_is_written_by_cameras_and_read_by_everyone_who_reads_frames() -> None:
    claims = "LINEGUARD_CLAIM_CHECK__URL"
    for name in ("scorer", "explainer", "console", "shadow", "operator"):
        service = SERVICES[name]
        assert f"claims:{env(service)[claims]}:ro" in service["volumes"], name
    for name in ("camera-sim", "claims-gc"):
        service = SERVICES[name]
        assert f"claims:{env(service)[claims]}" in service["volumes"], name
    assert SERVICES["claims-gc"]["command"][:2] == ["claim-check", "gc"]


def test_every_service_sends_its_traces_to_the_composed_collector_whose_pipeline_is_whole() -> None:
    collector = SERVICES["otel-collector"]
    image, tag = collector["image"].rsplit(":", 1)
    assert image == "otel/opentelemetry-collector-contrib" and re.fullmatch(r"\d+\.\d+\.\d+", tag)
    mounts = {m.split(":")[1]: m.split(":")[0] for m in collector["volumes"]}
    (config_arg,) = [a for a in collector["command"] if a.startswith("--config=")]
    config = yaml.safe_load((ROOT / mounts[config_arg.removeprefix("--config=")]).read_text())
    pipeline = config["service"]["pipelines"]["traces"]
    for part in ("receivers", "processors", "exporters"):
        assert pipeline[part] and set(pipeline[part]) <= set(config[part]), part
    assert pipeline["receivers"] == ["otlp"] and "batch" in pipeline["processors"]
    assert set(config["service"]["extensions"]) <= set(config["extensions"])
    port = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].rsplit(":", 1)[1]
    for name, service in lineguard_services().items():
        variables = env(service)
        assert variables["LINEGUARD_OTEL_EXPORTER"] == "otlp", name
        assert variables["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector:{port}", name
