"""The PLC bridge on the real broker against simulated PLCs (pymodbus and asyncua servers)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from services.plc_bridge import registers as reg
from services.plc_bridge.service import PlcBridge
from services.plc_bridge.simulators import ModbusPlcSimulator, OpcUaPlcSimulator
from shared.kafka.broker import free_port
from shared.kafka.client import make_consumer, make_producer
from shared.messages.codec import encode
from shared.messages.schemas import DeadLetter, Verdict
from shared.settings import FailSafeAction, PlcBridgeSettings, Settings
from tests.support import messages as build
from tests.support.services import running_service
from tests.support.topics import committed_and_end, end_offset, read_messages
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def verdict(frame_id: str, station: str, decision: str) -> Verdict:
    return build.verdict(
        frame_id, decision, score=0.7 if decision == "reject" else 0.2, raw_score=1.0, station_id=station
    )


def bridge_settings(base: Settings, stations: list[str], modbus_port: int, **plc: Any) -> Settings:
    """A bridge of ``stations`` with a Modbus PLC on this machine (and whatever else ``plc`` sets)."""
    group_id = f"plc-{uuid.uuid4().hex[:8]}"
    return base.model_copy(
        update={
            "plc_bridge": PlcBridgeSettings(
                group_id=group_id, stations=stations, modbus_host="127.0.0.1", modbus_port=modbus_port, **plc
            ),
            "scorer": base.scorer.model_copy(update={"group_id": f"scorer-{uuid.uuid4().hex[:8]}"}),
        }
    )


def running(settings: Settings) -> AbstractAsyncContextManager[PlcBridge]:
    return running_service(PlcBridge(settings))


async def publish(settings: Settings, *verdicts: Verdict | bytes, key: bytes = b"st-a") -> None:
    async with make_producer(settings) as producer:
        for v in verdicts:
            value = v if isinstance(v, bytes) else encode(v)
            k = key if isinstance(v, bytes) else v.station_id.encode()
            await producer.send_and_wait(settings.topic("verdicts"), value, key=k)


async def test_verdicts_reach_modbus_and_opcua_once_and_survive_a_restart(kafka_settings: Settings) -> None:
    modbus = ModbusPlcSimulator(port=free_port())
    opcua_url = f"opc.tcp://127.0.0.1:{free_port()}/lineguard/"
    opcua = OpcUaPlcSimulator(["st-a", "st-b"], endpoint=opcua_url)
    await modbus.start()
    await opcua.start()
    settings = bridge_settings(
        kafka_settings,
        ["st-a", "st-b"],
        modbus.port,
        opcua_url=opcua_url,
        heartbeat_interval_s=0.2,
        scorer_timeout_s=60,
    )
    try:
        async with running(settings):
            await publish(
                settings,
                verdict("f1", "st-a", "pass"),
                verdict("f2", "st-a", "reject"),
                verdict("f2", "st-a", "reject"),  # duplicate: applied once
                verdict("g1", "st-b", "pass"),
                b"\x00not msgpack",  # a bad record: to the DLQ, bridge keeps going
                verdict("f3", "st-a", "reject"),
            )

            async def modbus_done() -> bool:
                a = await modbus.station(0)
                return a["last_frame_id"] == "f3" and (await modbus.station(1))["last_frame_id"] == "g1"

            await wait_until(modbus_done)
            a, b = await modbus.station(0), await modbus.station(1)
            assert (a["pass_count"], a["reject_count"], a["reject"], a["sequence"]) == (1, 2, True, 3)
            assert a["last_decision"] == reg.DECISION_CODES["reject"]
            assert (b["pass_count"], b["reject_count"], b["reject"], b["sequence"]) == (1, 0, False, 1)

            async def opcua_done() -> bool:
                return (await opcua.station("st-a"))["last_frame_id"] == "f3"

            await wait_until(opcua_done)
            ua_a = await opcua.station("st-a")
            assert (ua_a["pass_count"], ua_a["reject_count"], ua_a["reject"], ua_a["sequence"]) == (
                1,
                2,
                True,
                3,
            )
            assert (await opcua.station("st-b"))["pass_count"] == 1

            first = (await modbus.line())["heartbeat"]
            await wait_until(lambda: _heartbeat_moved(modbus, first))
            line = await modbus.line()
            assert line["scorer_ok"] and not line["stop_line"] and line["stations"] == 2
            assert line["status"] & reg.STATUS_SCORER_OK
            assert (await opcua.line())["heartbeat"] > 0

        # A restarted bridge continues the PLC's counters and still applies each frame once.
        async with running(settings):
            await publish(settings, verdict("f3", "st-a", "reject"), verdict("f4", "st-a", "pass"))
            await wait_until(lambda: _frame_is(modbus, 0, "f4"))
            a = await modbus.station(0)
            assert (a["pass_count"], a["reject_count"], a["reject"], a["sequence"]) == (2, 2, False, 4)
    finally:
        await modbus.stop()
        await opcua.stop()

    letters = await read_messages(settings, "dlq", DeadLetter, 1, timeout_s=15)
    assert (
        letters[0].source_topic == settings.topic("verdicts")
        and letters[0].original_value == b"\x00not msgpack"
    )
    assert letters[0].service == "plc-bridge"


async def _heartbeat_moved(modbus: ModbusPlcSimulator, first: int) -> bool:
    return (await modbus.line())["heartbeat"] != first


async def _frame_is(modbus: ModbusPlcSimulator, index: int, frame_id: str) -> bool:
    return (await modbus.station(index))["last_frame_id"] == frame_id


async def test_scorer_silence_stops_the_line_until_the_scorer_is_back(kafka_settings: Settings) -> None:
    modbus = ModbusPlcSimulator(port=free_port())
    await modbus.start()
    settings = bridge_settings(
        kafka_settings,
        ["st-a", "st-b"],
        modbus.port,
        scorer_timeout_s=1.5,
        fail_safe=FailSafeAction.STOP_LINE,
    )
    # A live member of the scorer's consumer group: the bridge's proof that a scorer runs.
    scorer = make_consumer(settings, settings.topic("frames"), group_id=settings.scorer.group_id)
    await scorer.start()
    try:
        async with running(settings):
            await wait_until(lambda: _assigned(scorer))
            await asyncio.sleep(2.5)  # past the timeout: the group's members keep the line running
            line = await modbus.line()
            assert line["scorer_ok"] and not line["stop_line"]
            assert (await modbus.station(0))["fail_safe_count"] == 0

            await scorer.stop()  # the scorer leaves: fail-safe within the timeout

            async def failed_safe() -> bool:
                return bool((await modbus.line())["stop_line"])

            await wait_until(failed_safe, timeout=10)
            line = await modbus.line()
            assert not line["scorer_ok"] and line["status"] & reg.STATUS_FAIL_SAFE
            for index in (0, 1):
                st = await modbus.station(index)
                assert st["reject"] and st["fail_safe_count"] == 1
                assert st["last_decision"] == reg.DECISION_CODES["fail_safe"]

            await publish(settings, verdict("back-1", "st-a", "pass"))  # a verdict proves it is back

            async def recovered() -> bool:
                line = await modbus.line()
                return bool(line["scorer_ok"] and not line["stop_line"])

            await wait_until(recovered)
            assert not (await modbus.station(0))["reject"]
            assert (await modbus.station(1))["reject"]  # held until st-b's own next verdict
    finally:
        with contextlib.suppress(Exception):
            await scorer.stop()
        await modbus.stop()


async def _assigned(consumer: Any) -> bool:
    await consumer.getmany(timeout_ms=100)
    return bool(consumer.assignment())


async def test_tracked_part_missing_its_deadline_is_rejected(kafka_settings: Settings) -> None:
    modbus = ModbusPlcSimulator(port=free_port())
    await modbus.start()
    settings = bridge_settings(
        kafka_settings, ["st-a"], modbus.port, scorer_timeout_s=60, part_deadline_ms=400, poll_interval_ms=20
    )
    try:
        async with running(settings):
            await asyncio.sleep(0.2)  # the bridge has read the trigger baseline
            await modbus.trigger_part(0)  # a part enters; no verdict comes in time

            async def rejected() -> bool:
                return (await modbus.station(0))["fail_safe_count"] == 1

            await wait_until(rejected, timeout=5)
            st = await modbus.station(0)
            assert st["reject"] and (await modbus.line())["status"] & reg.STATUS_FAIL_SAFE

            await publish(settings, verdict("late-1", "st-a", "pass"))  # its late verdict
            await wait_until(lambda: _frame_is(modbus, 0, "late-1"))
            st = await modbus.station(0)
            assert st["reject"] and st["pass_count"] == 1  # counted; the part stays rejected

            await modbus.trigger_part(0)  # the next part gets its verdict in time
            await publish(settings, verdict("ok-2", "st-a", "pass"))
            await wait_until(lambda: _frame_is(modbus, 0, "ok-2"))
            await asyncio.sleep(0.6)  # past that part's deadline: no new fail-safe
            st = await modbus.station(0)
            assert not st["reject"] and st["fail_safe_count"] == 1 and st["pass_count"] == 2
    finally:
        await modbus.stop()


async def test_plc_outage_holds_commits_and_the_state_is_rewritten_when_it_returns(
    kafka_settings: Settings,
) -> None:
    port = free_port()
    modbus = ModbusPlcSimulator(port=port)
    await modbus.start()
    settings = bridge_settings(kafka_settings, ["st-a"], port, scorer_timeout_s=60, io_timeout_s=0.5)
    try:
        async with running(settings) as bridge:
            await publish(settings, verdict("before", "st-a", "reject"))
            await wait_until(lambda: _frame_is(modbus, 0, "before"))
            await modbus.stop()  # the PLC goes away
            await publish(settings, verdict("during", "st-a", "pass"))
            await wait_until(lambda: _core_saw(bridge, "during"))
            await asyncio.sleep(1.0)
            (partition,) = [p for p in range(4) if await end_offset(settings, "verdicts", p)]
            committed, end = await _committed(settings, partition)
            assert end == 2 and committed == 1  # "during" is not committed while the PLC is away

            modbus = ModbusPlcSimulator(port=port)  # back, and blank (a replaced PLC)
            await modbus.start()
            await wait_until(lambda: _frame_is(modbus, 0, "during"), timeout=20)
            st = await modbus.station(0)
            assert (st["pass_count"], st["reject_count"], st["reject"]) == (1, 1, False)
            await wait_until(lambda: _committed_is(settings, partition, 2))
    finally:
        await modbus.stop()


async def _core_saw(bridge: PlcBridge, frame_id: str) -> bool:
    return bridge.core.state["st-a"].last_frame_id == frame_id


async def _committed(settings: Settings, partition: int) -> tuple[int | None, int]:
    return await committed_and_end(settings, settings.plc_bridge.group_id, "verdicts", partition)


async def _committed_is(settings: Settings, partition: int, offset: int) -> bool:
    return (await _committed(settings, partition))[0] == offset
