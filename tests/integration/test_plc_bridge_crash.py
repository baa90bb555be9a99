"""The PLC bridge SIGKILLed after the PLC showed verdicts whose offsets were not committed (issue 9):
the real ``lineguard plc-bridge`` process, the real broker, a simulated Modbus PLC in this process.

The bridge commits at most every ``commit_interval_ms``; set to ten minutes, every verdict the PLC
shows before the kill is still uncommitted, so the restarted bridge reads them all again. Part
tracking is on: a replayed verdict must neither count twice nor be taken for a new part's result.
Then it is killed again and the PLC replaced by a blank one, which shows none of those verdicts.
"""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.plc_bridge import registers as reg
from services.plc_bridge.simulators import ModbusPlcSimulator
from shared.kafka.broker import free_port
from shared.kafka.client import make_producer
from shared.messages.codec import encode
from shared.messages.schemas import Verdict
from shared.settings import Settings
from tests.support import messages as build
from tests.support.processes import ServiceProcess, service_env
from tests.support.topics import committed_and_end, end_offset
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

STATION = "st-a"
PART_DEADLINE_MS = 3000


def verdict(frame_id: str, decision: str) -> Verdict:
    score = 0.7 if decision == "reject" else 0.2
    return build.verdict(frame_id, decision, score=score, raw_score=1.0, station_id=STATION, latency_ms=5)


async def publish(settings: Settings, *verdicts: Verdict) -> None:
    async with make_producer(settings) as producer:
        for v in verdicts:
            await producer.send_and_wait(settings.topic("verdicts"), encode(v), key=STATION.encode())


def bridge_env(
    settings: Settings, group_id: str, modbus_port: int, ledger: Path, metrics_port: int
) -> dict[str, str]:
    return {
        **service_env(
            settings,
            plc_bridge={
                "group_id": group_id,
                "stations": [STATION],
                "modbus_host": "127.0.0.1",
                "modbus_port": modbus_port,
                "scorer_timeout_s": 600,  # no scorer runs here: never the reason for a fail-safe
                "verdict_deadline_ms": 0,  # replays come seconds late: lateness is not what is tested
                "part_deadline_ms": PART_DEADLINE_MS,
                "commit_interval_ms": 600_000,
                "ledger_path": str(ledger),
            },
            scorer={"group_id": f"scorer-{uuid.uuid4().hex[:8]}"},
        ),
        "LINEGUARD_METRICS_PORT": str(metrics_port),
    }


def metric(port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not exported")


async def shows(modbus: ModbusPlcSimulator, **expected: Any) -> bool:
    """Station 0 shows ``expected``, written whole (the same read twice)."""
    first = await modbus.station(0)
    if any(first[k] != v for k, v in expected.items()):
        return False
    await asyncio.sleep(0.1)
    return await modbus.station(0) == first


async def test_sigkill_after_the_plc_showed_uncommitted_verdicts_applies_them_once(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    modbus = ModbusPlcSimulator(port=free_port())
    await modbus.start()
    group_id = f"plc-{uuid.uuid4().hex[:8]}"
    metrics_port = free_port()
    env = bridge_env(kafka_settings, group_id, modbus.port, tmp_path / "state" / "ledger.jsonl", metrics_port)
    replayed = "lineguard_plc_bridge_replayed_verdicts_total"
    try:
        killed = ServiceProcess(["plc-bridge"], env, tmp_path / "first.log")
        try:
            await killed.wait_for_log("plc bridge ready", 60)
            await modbus.trigger_part(0, 2)  # two parts enter the window, and are judged
            await publish(kafka_settings, verdict("p1", "pass"), verdict("p2", "reject"))
            await wait_until(lambda: shows(modbus, last_frame_id="p2"), 30, "the PLC to show p2")
            await asyncio.sleep(0.5)  # a commit, if one were coming, would land now
            (partition,) = [p for p in range(4) if await end_offset(kafka_settings, "verdicts", p)]
            # Shown, not committed: the restart reads both verdicts again.
            assert await committed_and_end(kafka_settings, group_id, "verdicts", partition) == (0, 2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{killed} log:\n{killed.log_tail()}") from exc
        finally:
            killed.kill()
        before = await modbus.station(0)
        assert (before["pass_count"], before["reject_count"], before["fail_safe_count"]) == (1, 1, 0)
        assert before["reject"] and before["last_decision"] == reg.DECISION_CODES["reject"]

        restarted = ServiceProcess(["plc-bridge"], env, tmp_path / "second.log")
        try:
            await restarted.wait_for_log("plc bridge ready", 60)
            await modbus.trigger_part(0, 1)  # a new part, which no verdict has judged

            # The replays are acknowledged without touching the PLC, so the new part is not "judged"
            # by a replayed verdict: it misses its deadline and is failed safe.
            await wait_until(lambda: metric(metrics_port, replayed, action="skipped") == 2, 30, "2 skipped")
            await wait_until(
                lambda: shows(modbus, fail_safe_count=1),
                PART_DEADLINE_MS / 1000 + 15,
                "the new part failed safe",
            )
            after = await modbus.station(0)
            assert (after["pass_count"], after["reject_count"], after["last_frame_id"]) == (1, 1, "p2")
            assert after["reject"] and after["last_decision"] == reg.DECISION_CODES["fail_safe"]
            assert metric(metrics_port, replayed, action="reapplied") == 0
            assert metric(metrics_port, "lineguard_plc_bridge_verdicts_total", outcome="replayed") == 2

            # New verdicts are applied as before (p3 is taken, first in first out, for the failed-safe
            # part's late verdict: counted, the reject kept).
            await publish(kafka_settings, verdict("p3", "pass"))
            await wait_until(lambda: shows(modbus, last_frame_id="p3"), 30, "the PLC to show p3")
            after = await modbus.station(0)
            assert (after["pass_count"], after["reject_count"], after["fail_safe_count"]) == (2, 1, 1)
            assert await committed_and_end(kafka_settings, group_id, "verdicts", partition) == (0, 3)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{restarted} log:\n{restarted.log_tail()}") from exc
        finally:
            restarted.kill()

        # Killed again, and the PLC replaced by a blank one: it shows none of the ledger's verdicts,
        # so the replays are applied to it, once each, and still judge no new part.
        await modbus.stop()
        modbus = ModbusPlcSimulator(port=modbus.port)
        await modbus.start()
        replaced = ServiceProcess(["plc-bridge"], env, tmp_path / "third.log")
        try:
            await replaced.wait_for_log("plc bridge ready", 60)
            await modbus.trigger_part(0, 1)
            await wait_until(
                lambda: metric(metrics_port, replayed, action="reapplied") == 3, 30, "3 reapplied"
            )
            await wait_until(
                lambda: shows(modbus, pass_count=2, reject_count=1, last_frame_id="p3", fail_safe_count=1),
                PART_DEADLINE_MS / 1000 + 15,
                "the replays shown and the new part failed safe",
            )
            assert metric(metrics_port, replayed, action="skipped") == 0
            assert await replaced.terminate() == 0  # a clean stop commits what the PLC shows
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{replaced} log:\n{replaced.log_tail()}") from exc
        finally:
            replaced.kill()
        assert await committed_and_end(kafka_settings, group_id, "verdicts", partition) == (3, 3)
    finally:
        await modbus.stop()
