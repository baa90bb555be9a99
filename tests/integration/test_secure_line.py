"""The whole line on the secure broker, every service a real ``lineguard`` process with its own identity.

camera-sim (camera) -> scorer (scorer) -> verdicts -> plc-bridge (plc-bridge) -> a simulated PLC;
defects -> explainer (explainer) -> reports; alerts -> alerts (alerts) -> a webhook. Each process gets
only its principal's env file (``kafka up --secure``'s); results are read as ``console`` (alerts:
``alerts``).
Exactly once: one verdict per frame, one defect event per reject or review, one report per event.
Every process's log, and the broker's, is searched for the passwords and the private keys.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from services.camera_sim.truth import read_truth
from shared.kafka.broker import free_ports
from shared.kafka.client import make_admin
from shared.kafka.principals import PRINCIPAL_NAMES
from shared.kafka.secure_broker import SecureLocalBroker, read_env_file
from shared.messages.schemas import AlertEvent, DefectEvent, Report, Verdict
from tests.support.line import IMAGE_SIZE, LineModels
from tests.support.models import PRODUCTS
from tests.support.processes import ServiceProcess
from tests.support.topics import TopicReader
from tests.support.waiting import wait_until
from tests.support.webhook_server import WebhookServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FRAMES = 30


def principal_env(broker: SecureLocalBroker, name: str, **settings: str) -> dict[str, str]:
    """Only what the principal's env file says (plus the service's own settings), logging everything."""
    return {**read_env_file(broker.layout.env_file(name)), "LINEGUARD_LOG_LEVEL": "DEBUG", **settings}


async def committed_past(broker: SecureLocalBroker, group: str, reader: TopicReader) -> bool:
    """Whether ``group`` has committed past every record ``reader`` saw on its topic (asked as admin)."""
    last: dict[int, int] = {}
    for partition, offset in reader._seen:
        last[partition] = max(offset, last.get(partition, -1))
    admin = make_admin(broker.client_settings("admin"))
    await admin.start()
    try:
        tps = [TopicPartition(reader.topic, p) for p in last]
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
    finally:
        await admin.close()
    return all(committed.get(tp) is not None and committed[tp].offset > last[tp.partition] for tp in tps)


def private_key_lines(*pem_files: Path) -> set[str]:
    """The base64 body lines of every private key in these PEM files."""
    lines: set[str] = set()
    for path in pem_files:
        for block in re.findall(r"-----BEGIN [A-Z ]*PRIVATE KEY-----(.*?)-----END", path.read_text(), re.S):
            lines.update(line for line in block.split() if len(line) >= 16)
    return lines


async def test_the_line_works_with_one_identity_per_service_and_logs_no_secret(
    secure_kafka: SecureLocalBroker, line_models: LineModels, tmp_path: Path
) -> None:
    broker = secure_kafka
    console = broker.client_settings("console")
    modbus_port, opcua_port = free_ports(2)
    processes: dict[str, ServiceProcess] = {}

    def start(name: str, args: list[str], env: dict[str, str]) -> ServiceProcess:
        processes[name] = ServiceProcess(args, env, tmp_path / f"{name}.log")
        return processes[name]

    with WebhookServer() as webhook:
        try:
            plc_sim = ["plc-sim", "--host", "127.0.0.1", "--modbus-port", str(modbus_port)]
            start(
                "plc-sim",
                [*plc_sim, "--opcua-port", str(opcua_port), "--stations", "station-1"],
                {},
            )
            scorer = start(
                "scorer",
                ["scorer", "--model", str(line_models.a)],
                principal_env(
                    broker,
                    "scorer",
                    LINEGUARD_SCORER__TORCH_THREADS="1",
                    LINEGUARD_SCORER__DECODE_THREADS="1",
                    LINEGUARD_SCORER__MODEL_WORKERS="1",
                    LINEGUARD_SCORER__SESSION_TIMEOUT_MS="6000",
                    LINEGUARD_ALERTS__CONSECUTIVE_REJECTS="1",  # every reject streak raises an alert
                ),
            )
            explainer = start(
                "explainer",
                ["explainer"],
                principal_env(broker, "explainer", LINEGUARD_EXPLAINER__REPORT_DIR=str(tmp_path / "reports")),
            )
            alerts = start(
                "alerts",
                ["alerts"],
                principal_env(
                    broker,
                    "alerts",
                    LINEGUARD_ALERTS__WEBHOOK_URL=webhook.url,
                    LINEGUARD_ALERTS__STATE_DIR=str(tmp_path / "alerts"),  # this run's delivery ledger
                    LINEGUARD_ALERTS__RATE_LIMIT_BURST="100",
                ),
            )
            await processes["plc-sim"].wait_for_event("simulated plc serving", 60)
            bridge = start(
                "plc-bridge",
                ["plc-bridge"],
                principal_env(
                    broker,
                    "plc-bridge",
                    LINEGUARD_PLC_BRIDGE__MODBUS_HOST="127.0.0.1",
                    LINEGUARD_PLC_BRIDGE__MODBUS_PORT=str(modbus_port),
                    LINEGUARD_PLC_BRIDGE__STATIONS='["station-1"]',
                ),
            )
            await scorer.wait_for_event("partitions_assigned", 180)
            await explainer.wait_for_event("explainer_started", 120)
            await alerts.wait_for_event("alerts forwarder ready", 120)
            await bridge.wait_for_event("plc bridge ready", 120)

            async with (
                TopicReader(console, "verdicts", Verdict) as verdicts,
                TopicReader(console, "defects", DefectEvent) as defects,
                TopicReader(console, "reports", Report) as reports,
                TopicReader(broker.client_settings("alerts"), "alerts", AlertEvent) as raised,
            ):
                truth_path = tmp_path / "truth.jsonl"
                frames = [
                    "--synthetic",
                    "--products",
                    ",".join(PRODUCTS),
                    "--size",
                    str(IMAGE_SIZE),
                    "--pool",
                    "16",
                ]
                frames += ["--defect-rate", "0.3", "--rate", "20", "--count", str(FRAMES), "--seed", "3"]
                frames += ["--truth", str(truth_path), "--run-id", "secure"]
                camera = start("camera-sim", ["camera-sim", *frames], principal_env(broker, "camera"))
                assert await camera.wait_exit(180) == 0, camera.log_text()[-3000:]
                truth = read_truth(truth_path)
                got = await verdicts.wait_for(FRAMES, timeout=180)
                flagged = [v.frame_id for v in got.values if v.decision in ("reject", "review")]
                await defects.wait_for(len(flagged), timeout=60, settle=0.5)
                await reports.wait_for(len(flagged), timeout=120)
                rejects = [v for v in got.values if v.decision == "reject"]
                if rejects:
                    await raised.wait_for(1, timeout=60, settle=0.5)
                    await wait_until(lambda: webhook.delivered(), 60, "an alert at the webhook")
                # The bridge and the forwarder commit what they delivered (the explainer: its reports).
                for group, reader in (
                    (console.plc_bridge.group_id, verdicts),
                    (console.alerts.group_id, raised),
                ):
                    deadline = asyncio.get_running_loop().time() + 60
                    while not await committed_past(broker, group, reader):
                        assert asyncio.get_running_loop().time() < deadline, f"{group} never caught up"
                        await asyncio.sleep(1)
        finally:
            codes = {}
            for name in ("camera-sim", "plc-bridge", "alerts", "explainer", "scorer", "plc-sim"):
                if name in processes:
                    try:
                        codes[name] = await processes[name].terminate(60)
                    except AssertionError:  # still running after SIGTERM: killed, and a failure below
                        codes[name] = -9
                    finally:
                        processes[name].kill()

    # Exactly once, end to end.
    assert Counter(v.frame_id for v in got.values) == Counter(list(truth))
    assert Counter(e.verdict.frame_id for e in defects.received.values) == Counter(flagged)
    assert Counter(r.frame_id for r in reports.received.values) == Counter(flagged)
    assert len(rejects) > 0, "the synthetic defects should give the scorer something to reject"
    assert {a.kind for a in raised.received.values} == {"consecutive_rejects"}
    assert all(code == 0 for name, code in codes.items() if name != "plc-sim"), codes

    # No secret in any log: the services', the camera's and the broker's own.
    logs = {name: p.log_text() for name, p in processes.items()} | {
        "broker": broker.broker.log_file.read_text()
    }
    secrets = {
        f"password of {n}": broker.layout.password_file(n).read_text().strip() for n in PRINCIPAL_NAMES
    }
    key_lines = private_key_lines(broker.layout.ca_key, broker.layout.keystore)
    assert len(key_lines) >= 4
    for name, text in logs.items():
        assert text, f"{name} logged nothing"
        for what, secret in secrets.items():
            assert secret not in text, f"{what} in the log of {name}"
        assert "PRIVATE KEY" not in text, name
        assert not [line for line in key_lines if line in text], f"private key material in the log of {name}"
    # The logs did record the work (what was searched is the real thing).
    assert '"scorer_started"' in logs["scorer"] or "scorer_started" in logs["scorer"]
    assert "SASL_SSL" in logs["broker"]
