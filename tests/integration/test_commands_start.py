"""Every long-running ``lineguard`` command starts as documented and stops cleanly.

Each runs as a real subprocess with the command, environment and health check of its service in
docker-compose.yml (the documented plant set-up), on the secure broker as its own principal
(SASL_SSL, SCRAM, ACLs: as composed); only what names the host is swapped: Kafka's address and the
topic prefix, ports, secret files (its password file, the CA) and volumes. Each must reach ready (its log line
and its compose health check), do its job's first visible thing where that is cheap to see (the
PLC heartbeat counts, the camera's frames arrive), then exit 0 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.plc_bridge import registers as reg
from shared.kafka.broker import free_port, free_ports
from shared.kafka.secure_broker import SecretsLayout, SecureLocalBroker
from shared.settings import Settings
from tests.support.line import LineModels
from tests.support.processes import ComposeService, ServiceProcess, compose_service, run_check
from tests.support.topics import read_records
from tests.support.webhook_server import WebhookServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COMPOSE_METRICS_PORT = "9100"
READY_S = 120.0  # a cold start of torch on a busy two-core machine


@pytest.fixture
def kafka_settings(secure_kafka: SecureLocalBroker, request: pytest.FixtureRequest) -> Settings:
    """This test's topic prefix and consumer groups on the secure broker, with the ACLs the table
    gives each principal for them; the settings themselves read as ``scorer`` (it may read frames)."""
    prefix = f"c{uuid.uuid4().hex[:8]}-{request.node.name[:30]}".replace("[", "-").replace("]", "")
    prefix = "".join(c if c.isalnum() or c in "._-" else "-" for c in prefix)
    base = secure_kafka.settings.model_copy(update={"topic_prefix": prefix})
    settings = base.model_copy(
        update={
            "scorer": base.scorer.model_copy(
                update={"group_id": f"{prefix}-scorer", "transactional_id_prefix": f"{prefix}-txn"}
            ),
            "explainer": base.explainer.model_copy(update={"group_id": f"{prefix}-explainer"}),
            "plc_bridge": base.plc_bridge.model_copy(update={"group_id": f"{prefix}-plc"}),
            "alerts": base.alerts.model_copy(update={"group_id": f"{prefix}-alerts"}),
        }
    )
    assert own_groups(settings) == {
        "LINEGUARD_SCORER__GROUP_ID": settings.scorer.group_id,
        "LINEGUARD_SCORER__TRANSACTIONAL_ID_PREFIX": settings.scorer.transactional_id_prefix,
        "LINEGUARD_EXPLAINER__GROUP_ID": settings.explainer.group_id,
        "LINEGUARD_PLC_BRIDGE__GROUP_ID": settings.plc_bridge.group_id,
        "LINEGUARD_ALERTS__GROUP_ID": settings.alerts.group_id,
    }
    secure_kafka.authorize(settings)
    scorer = secure_kafka.client_settings("scorer")
    return settings.model_copy(update={"kafka_bootstrap": scorer.kafka_bootstrap, "kafka": scorer.kafka})


def composed(
    name: str, settings: Settings, *, ports: dict[str, int] | None = None, **overrides: str
) -> tuple[ComposeService, dict[str, str], int]:
    """The compose service ``name`` pointed at this test's broker: its environment with Kafka, the
    topic prefix, its secret files and the metrics port swapped, then ``overrides`` (each must be a
    variable the compose file sets: the test swaps what is documented, it does not add to it)."""
    service = compose_service(name)
    missing = sorted(set(overrides) - set(service.environment))
    assert not missing, f"{name}: compose does not set {missing}"
    metrics_port = free_port()
    env = dict(service.environment)
    env.update(
        {
            "LINEGUARD_KAFKA_BOOTSTRAP": settings.bootstrap,
            "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix,
            "LINEGUARD_METRICS_PORT": str(metrics_port),
        }
    )
    principal = env.get("LINEGUARD_KAFKA__SASL_USERNAME")
    if principal:  # compose's /run/secrets files: this broker's CA and the principal's password
        layout = SecretsLayout(Path(str(settings.kafka.ssl_ca_file)).parent)
        assert env["LINEGUARD_KAFKA__SASL_PASSWORD_FILE"] == "/run/secrets/kafka_password"
        assert env["LINEGUARD_KAFKA__SSL_CA_FILE"] == "/run/secrets/kafka_ca"
        env["LINEGUARD_KAFKA__SASL_PASSWORD_FILE"] = str(layout.password_file(principal))
        env["LINEGUARD_KAFKA__SSL_CA_FILE"] = str(layout.ca_cert)
    env.update(overrides)
    port_map = {COMPOSE_METRICS_PORT: str(metrics_port), **{k: str(v) for k, v in (ports or {}).items()}}
    check = [_swap_ports(part, port_map) for part in service.healthcheck]
    return ComposeService(service.command, env, check), env, metrics_port


def _swap_ports(text: str, port_map: dict[str, str]) -> str:
    for compose_port, port in port_map.items():
        text = text.replace(compose_port, port)
    return text


def own_groups(settings: Settings) -> dict[str, str]:
    """Consumer groups of this test alone (compose uses the defaults, shared by a whole session)."""
    p = settings.topic_prefix
    return {
        "LINEGUARD_SCORER__GROUP_ID": f"{p}-scorer",
        "LINEGUARD_SCORER__TRANSACTIONAL_ID_PREFIX": f"{p}-txn",
        "LINEGUARD_EXPLAINER__GROUP_ID": f"{p}-explainer",
        "LINEGUARD_PLC_BRIDGE__GROUP_ID": f"{p}-plc",
        "LINEGUARD_ALERTS__GROUP_ID": f"{p}-alerts",
    }


@contextlib.asynccontextmanager
async def started(
    service: ComposeService, env: dict[str, str], log: Path, ready_event: str, args: list[str] | None = None
) -> AsyncIterator[ServiceProcess]:
    """Start it, wait for its ready log line and a passing health check; on exit SIGTERM, expect 0."""
    process = ServiceProcess(args if args is not None else service.command, env, log)
    try:
        await process.wait_for_event(ready_event, READY_S)
        if service.healthcheck:
            await _healthy(service.healthcheck, process)
        yield process
        code = await process.terminate()
        assert code == 0, f"exit {code} after SIGTERM:\n{process.log_text()[-4000:]}"
        assert "Traceback" not in process.log_text(), process.log_text()[-4000:]
    finally:
        process.kill()


async def _healthy(check: list[str], process: ServiceProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (code := await run_check(check)) != 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"health check {check} fails ({code}):\n{process.log_text()[-3000:]}")
        await asyncio.sleep(0.5)


# ---- the PLC bridge against `lineguard plc-sim`, with Modbus, OPC UA, or both (compose's default) ----


@pytest.mark.parametrize("protocols", ["modbus+opcua", "modbus", "opcua"])
async def test_plc_bridge_starts_against_plc_sim_as_composed(
    kafka_settings: Settings, tmp_path: Path, protocols: str
) -> None:
    modbus_port, opcua_port = free_ports(2)
    ports = {"5020": modbus_port, "4840": opcua_port}
    sim, sim_env, _ = composed("plc-sim", kafka_settings, ports=ports)
    sim_args = [_swap_ports(part, {k: str(v) for k, v in ports.items()}) for part in sim.command]
    async with started(sim, sim_env, tmp_path / "plc-sim.log", "simulated plc serving", args=sim_args):
        bridge_vars = {
            "LINEGUARD_PLC_BRIDGE__MODBUS_HOST": "127.0.0.1" if "modbus" in protocols else "",
            "LINEGUARD_PLC_BRIDGE__MODBUS_PORT": str(modbus_port),
            "LINEGUARD_PLC_BRIDGE__OPCUA_URL": (
                f"opc.tcp://127.0.0.1:{opcua_port}/lineguard/" if "opcua" in protocols else ""
            ),
        }
        service, env, _ = composed("plc-bridge", kafka_settings, **bridge_vars)
        env.update(own_groups(kafka_settings))
        async with started(service, env, tmp_path / "plc-bridge.log", "plc bridge ready") as bridge:
            if "modbus" in protocols:
                await _counts(lambda: _modbus_heartbeat(modbus_port), "modbus heartbeat", bridge)
            if "opcua" in protocols:
                await _counts(lambda: _opcua_heartbeat(opcua_port), "opcua heartbeat", bridge)


async def _counts(read: Any, what: str, process: ServiceProcess, timeout: float = 20.0) -> None:
    first = await read()
    deadline = time.monotonic() + timeout
    while (await read()) == first:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} stays at {first}:\n{process.log_text()[-3000:]}")
        await asyncio.sleep(0.2)


async def _modbus_heartbeat(port: int) -> int:
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2)
    try:
        assert await client.connect()
        response = await client.read_holding_registers(reg.HR_HEARTBEAT, count=1, device_id=1)
        assert not response.isError()
        return int(response.registers[0])
    finally:
        client.close()


async def _opcua_heartbeat(port: int) -> int:
    from asyncua import Client

    client = Client(f"opc.tcp://127.0.0.1:{port}/lineguard/", timeout=5)
    await client.connect()
    try:
        ns = await client.get_namespace_index("urn:lineguard:plc")
        node = client.get_node(f"ns={ns};s={reg.OpcUaNames.line('heartbeat')}")
        return int(await node.read_value())
    finally:
        await client.disconnect()


# ---- the explainer without a VLM (compose's default: empty endpoint, empty key file) -----------------


async def test_explainer_without_a_vlm_starts_as_composed(kafka_settings: Settings, tmp_path: Path) -> None:
    empty_key = tmp_path / "vlm_api_key"
    empty_key.write_text("")  # docs/operations.md: "empty: fallback reports only"
    service, env, _ = composed(
        "explainer",
        kafka_settings,
        LINEGUARD_EXPLAINER__API_KEY_FILE=str(empty_key),
        LINEGUARD_EXPLAINER__REPORT_DIR=str(tmp_path / "reports"),
    )
    assert env["LINEGUARD_EXPLAINER__BASE_URL"] == ""  # no VLM, as composed
    env.update(own_groups(kafka_settings))
    async with started(service, env, tmp_path / "explainer.log", "explainer_started") as explainer:
        (event,) = [e for e in explainer.events() if e.get("event") == "explainer_started"]
        assert event["endpoint"] is False


# ---- operator alerts: with the webhook secret; without one it starts and logs alerts only ---------


async def test_alerts_starts_as_composed_with_or_without_a_webhook(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    secret = tmp_path / "alerts_webhook_url"
    with WebhookServer() as webhook:
        secret.write_text(webhook.url + "\n")
        service, env, _ = composed("alerts", kafka_settings, LINEGUARD_ALERTS__WEBHOOK_URL_FILE=str(secret))
        env.update(own_groups(kafka_settings))
        async with started(service, env, tmp_path / "alerts.log", "alerts forwarder ready"):
            pass
    # The compose file's documented empty secret: the log-only mode, never a restart loop (issue 12).
    secret.write_text("")
    async with started(service, env, tmp_path / "alerts-empty.log", "alerts forwarder ready") as alerts:
        assert "no webhook configured" in alerts.log_text()
        assert "Traceback" not in alerts.log_text()


# ---- the scorer with a model directory, and the camera simulator -----------------------------------


async def test_scorer_starts_as_composed(
    kafka_settings: Settings, line_models: LineModels, tmp_path: Path
) -> None:
    from services.scorer.trust import generate_signing_key

    # compose's secret model_signing_key_pub: the public half of the operator's signing key
    keys = generate_signing_key(tmp_path / "keys", "model_signing_key")
    service, env, _ = composed(
        "scorer",
        kafka_settings,
        LINEGUARD_SCORER__MODEL_DIR=str(line_models.a),
        LINEGUARD_SCORER__TRUSTED_KEYS=str(keys.public),
    )
    env.update(own_groups(kafka_settings))
    async with started(service, env, tmp_path / "scorer.log", "partitions_assigned") as scorer:
        assert keys.key_id in scorer.log_text(), "the scorer names the key it trusts at start"


async def test_camera_sim_starts_as_composed(kafka_settings: Settings, tmp_path: Path) -> None:
    service, env, _ = composed("camera-sim", kafka_settings)
    async with started(service, env, tmp_path / "camera-sim.log", "camera_sim_started") as camera:
        frames = await read_records(kafka_settings, "frames", 3, timeout_s=60)  # 2 cameras at 5/s
        assert len(frames) >= 3, f"no frames:\n{camera.log_tail()}"


# ---- the operator console: with its token secret; an empty secret stops it with one clear line ------


async def test_console_starts_as_composed_and_needs_its_token(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    import urllib.request

    secret = tmp_path / "console_token"
    secret.write_text("a-console-token-of-some-length\n")
    port = free_port()
    service, env, _ = composed(
        "console",
        kafka_settings,
        ports={"8080": port},
        LINEGUARD_CONSOLE__HOST="127.0.0.1",
        LINEGUARD_CONSOLE__PORT=str(port),
        LINEGUARD_CONSOLE__TOKEN_FILE=str(secret),
        LINEGUARD_EXPLAINER__REPORT_DIR=str(tmp_path / "reports"),
        LINEGUARD_LABELS__FRAMES_DIR=str(tmp_path / "frames"),
    )
    async with started(service, env, tmp_path / "console.log", "console ready"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=10) as response:
            assert response.status == 200 and b"Console token" in response.read()
    secret.write_text("")
    refused = ServiceProcess(service.command, env, tmp_path / "console-empty.log")
    assert await refused.wait_exit(60) == 2
    assert "LINEGUARD_CONSOLE__TOKEN" in refused.log_text() and "Traceback" not in refused.log_text()


# ---- refit proposals: `lineguard loop check --watch` -------------------------------------------------


async def test_refit_check_starts_as_composed(kafka_settings: Settings, tmp_path: Path) -> None:
    service, env, _ = composed("refit-check", kafka_settings, LINEGUARD_PROMOTION__REFIT_CHECK_INTERVAL_S="1")
    async with started(service, env, tmp_path / "refit-check.log", "refit_checked") as check:
        assert "refit_checks_started" in check.log_text()
