"""The PLC bridge on the real broker against simulated PLCs (pymodbus and asyncua servers)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
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
from tests.support.broker import throwaway_broker
from tests.support.services import running_service
from tests.support.topics import committed_and_end, end_offset, read_messages
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def verdict(frame_id: str, station: str, decision: str, *, age_s: float = 0.005) -> Verdict:
    """A verdict on a frame captured ``age_s`` ago, decided just now."""
    score = 0.7 if decision == "reject" else 0.2
    return build.verdict(
        frame_id, decision, score=score, raw_score=1.0, station_id=station, latency_ms=age_s * 1000
    )


LEDGERS = Path(tempfile.gettempdir()) / f"lineguard-plc-ledgers-{os.getpid()}"  # made by the bridges


@pytest.fixture(autouse=True, scope="module")
def _remove_ledgers() -> Iterator[None]:
    yield
    shutil.rmtree(LEDGERS, ignore_errors=True)


def bridge_settings(base: Settings, stations: list[str], modbus_port: int, **plc: Any) -> Settings:
    """A bridge of ``stations`` with a Modbus PLC on this machine (and whatever else ``plc`` sets)."""
    group_id = f"plc-{uuid.uuid4().hex[:8]}"
    plc.setdefault("ledger_path", LEDGERS / f"{group_id}.jsonl")  # the bridge's own, across its restarts
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
                b"\x00not msgpack",  # a bad record keyed st-a: st-a fails safe, record to the DLQ
                verdict("f3", "st-a", "reject"),
            )

            async def modbus_done() -> bool:
                return await _frame_is(modbus, 0, "f3") and await _frame_is(modbus, 1, "g1")

            await wait_until(modbus_done)
            a, b = await modbus.station(0), await modbus.station(1)
            # f1, f2, the bad record's fail-safe, f3: four results at st-a
            assert (a["pass_count"], a["reject_count"], a["reject"], a["sequence"]) == (1, 2, True, 4)
            assert a["last_decision"] == reg.DECISION_CODES["reject"] and a["fail_safe_count"] == 1
            assert (b["pass_count"], b["reject_count"], b["reject"], b["sequence"]) == (1, 0, False, 1)

            async def opcua_done() -> bool:  # shown, and written whole (read the same twice)
                first = await opcua.station("st-a")
                await asyncio.sleep(0.1)
                return first["last_frame_id"] == "f3" and await opcua.station("st-a") == first

            await wait_until(opcua_done)
            ua_a = await opcua.station("st-a")
            assert (ua_a["pass_count"], ua_a["reject_count"], ua_a["reject"], ua_a["sequence"]) == (
                1,
                2,
                True,
                4,
            )
            assert ua_a["fail_safe_count"] == 1
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
            assert (a["pass_count"], a["reject_count"], a["reject"], a["sequence"]) == (2, 2, False, 5)
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
    """The station shows ``frame_id`` and its result is written whole: the bridge writes a result
    in several requests (the sequence last), so the station must read the same twice in a row."""
    first = await modbus.station(index)
    if first["last_frame_id"] != frame_id:
        return False
    await asyncio.sleep(0.1)
    return await modbus.station(index) == first


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

            async def rejected() -> bool:  # the station's result, then the line's status (written after it)
                failed = (await modbus.station(0))["fail_safe_count"] == 1
                return failed and bool((await modbus.line())["status"] & reg.STATUS_FAIL_SAFE)

            await wait_until(rejected, timeout=5)
            assert (await modbus.station(0))["reject"]

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


# ---- issue 9: fail-safe on the bridge's own clock; late, undecodable, per-station duplicates ----


async def test_late_and_undecodable_verdicts_fail_their_station_safe_and_duplicates_are_per_station(
    kafka_settings: Settings,
) -> None:
    modbus = ModbusPlcSimulator(port=free_port())
    await modbus.start()
    settings = bridge_settings(
        kafka_settings, ["st-a", "st-b"], modbus.port, scorer_timeout_s=60, verdict_deadline_ms=2000
    )
    try:
        async with running(settings):
            # One frame id at two stations is two parts: both applied.
            await publish(settings, verdict("f1", "st-a", "pass"), verdict("f1", "st-b", "reject"))
            await wait_until(lambda: _frame_is(modbus, 1, "f1"))
            await wait_until(lambda: _frame_is(modbus, 0, "f1"))
            a, b = await modbus.station(0), await modbus.station(1)
            assert (a["pass_count"], a["reject"], b["reject_count"], b["reject"]) == (1, False, 1, True)

            # A pass that arrives 10 s after its capture is too late to act on: st-a fails safe.
            await publish(settings, verdict("stale", "st-a", "pass", age_s=10.0))
            await wait_until(lambda: _frame_is(modbus, 0, "stale"))
            a = await modbus.station(0)
            assert a["reject"] and a["fail_safe_count"] == 1 and a["pass_count"] == 2
            assert a["last_decision"] == reg.DECISION_CODES["fail_safe"]

            # A fresh pass releases it; then an undecodable record keyed st-a fails only st-a safe.
            await publish(settings, verdict("f2", "st-a", "pass"), verdict("g2", "st-b", "pass"))
            await wait_until(lambda: _frame_is(modbus, 1, "g2"))
            await wait_until(lambda: _frame_is(modbus, 0, "f2"))
            assert not (await modbus.station(0))["reject"]
            await publish(settings, b"\x93garbage", key=b"st-a")

            async def st_a_failed_safe_again() -> bool:
                """Counted, and the result written whole (counters come before the reject coil and
                the sequence: read the same twice in a row, as ``_frame_is`` does)."""
                first = await modbus.station(0)
                if first["fail_safe_count"] != 2:
                    return False
                await asyncio.sleep(0.1)
                return await modbus.station(0) == first

            await wait_until(st_a_failed_safe_again)
            a, b = await modbus.station(0), await modbus.station(1)
            assert a["reject"] and a["last_decision"] == reg.DECISION_CODES["fail_safe"]
            assert not b["reject"] and b["fail_safe_count"] == 0
    finally:
        await modbus.stop()
    letters = await read_messages(settings, "dlq", DeadLetter, 1, timeout_s=15)
    assert [letter.original_value for letter in letters] == [b"\x93garbage"]


async def test_a_stuck_scorer_with_frames_waiting_fails_the_line_safe_until_it_moves(
    kafka_settings: Settings,
) -> None:
    """The scorer's group has a member, but it commits nothing while frames wait: not alive."""
    from aiokafka import TopicPartition

    modbus = ModbusPlcSimulator(port=free_port())
    await modbus.start()
    settings = bridge_settings(kafka_settings, ["st-a"], modbus.port, scorer_timeout_s=2.0)
    stuck = make_consumer(settings, settings.topic("frames"), group_id=settings.scorer.group_id)
    await stuck.start()
    polling = asyncio.create_task(_keep_polling(stuck))  # a member that never commits
    try:
        async with running(settings):
            await wait_until(lambda: bool(stuck.assignment()))
            await publish_raw(settings, settings.topic("frames"), [b"frame-1", b"frame-2"], key=b"cam-1")
            await asyncio.sleep(1.0)
            assert (await modbus.line())["scorer_ok"]  # waiting less than the timeout is fine

            async def failed_safe() -> bool:
                return not (await modbus.line())["scorer_ok"]

            await wait_until(failed_safe, timeout=10)
            st = await modbus.station(0)
            assert st["reject"] and st["fail_safe_count"] == 1
            assert (await modbus.line())["status"] & reg.STATUS_FAIL_SAFE
            # A verdict while frames are stuck is counted, but cannot release the reject.
            await publish(settings, verdict("while-stuck", "st-a", "pass"))
            await wait_until(lambda: _frame_is(modbus, 0, "while-stuck"))
            assert (await modbus.station(0))["reject"]

            # The scorer gets going: its committed offset moves past the waiting frames.
            polling.cancel()
            ends = await stuck.end_offsets(list(stuck.assignment()))
            await stuck.commit({tp: offset for tp, offset in ends.items() if isinstance(tp, TopicPartition)})
            polling = asyncio.create_task(_keep_polling(stuck))

            async def recovered() -> bool:
                return bool((await modbus.line())["scorer_ok"])

            await wait_until(recovered, timeout=10)
            await publish(settings, verdict("after", "st-a", "pass"))
            await wait_until(lambda: _frame_is(modbus, 0, "after"))
            st = await modbus.station(0)
            assert not st["reject"] and st["fail_safe_count"] == 1
    finally:
        polling.cancel()
        with contextlib.suppress(BaseException):
            await polling
        await stuck.stop()
        await modbus.stop()


async def _keep_polling(consumer: Any) -> None:
    while True:
        await consumer.getmany(timeout_ms=200)


async def publish_raw(settings: Settings, topic: str, values: list[bytes], *, key: bytes) -> None:
    async with make_producer(settings) as producer:
        for value in values:
            await producer.send_and_wait(topic, value, key=key)


async def test_kafka_unreachable_from_the_start_keeps_the_heartbeat_and_fails_safe(
    kafka_settings: Settings,
) -> None:
    modbus = ModbusPlcSimulator(port=free_port())
    await modbus.start()
    nowhere = kafka_settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    settings = bridge_settings(nowhere, ["st-a"], modbus.port, scorer_timeout_s=1.5, heartbeat_interval_s=0.2)
    bridge = PlcBridge(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    try:
        beats = await _heartbeats(modbus, seconds=3.0)
        assert len(beats) >= 5, f"heartbeat not kept while Kafka is away: {beats}"

        async def failed_safe() -> bool:
            return bool((await modbus.station(0))["fail_safe_count"] == 1)

        await wait_until(failed_safe, timeout=5)
        line = await modbus.line()
        assert not line["scorer_ok"] and line["status"] & reg.STATUS_FAIL_SAFE
        assert not task.done(), "the bridge must keep running (and retrying Kafka)"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await modbus.stop()


async def _heartbeats(modbus: ModbusPlcSimulator, seconds: float) -> list[int]:
    """The distinct heartbeat values the PLC shows over ``seconds``, read every 50 ms."""
    seen: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        beat = (await modbus.line())["heartbeat"]
        if not seen or seen[-1] != beat:
            seen.append(beat)
        await asyncio.sleep(0.05)
    return seen


async def test_kafka_frozen_mid_stream_never_freezes_the_outputs(tmp_path: Any) -> None:
    """The broker is stopped (SIGSTOP: connections hang, nothing answers) with a commit pending."""
    import os
    import signal

    from shared.kafka.client import ensure_topics

    cleanup = contextlib.ExitStack()  # the broker, stopped last
    broker = cleanup.enter_context(throwaway_broker(tmp_path / "kafka", heap="256m"))
    pid = broker.status().pid
    assert pid is not None
    port = free_port()
    modbus = ModbusPlcSimulator(port=port)
    await modbus.start()
    base = Settings(kafka_bootstrap=broker.bootstrap, topic_prefix=f"frozen-{uuid.uuid4().hex[:6]}")
    await ensure_topics(base, frames_partitions=1)
    settings = bridge_settings(
        base, ["st-a"], port, scorer_timeout_s=3.0, heartbeat_interval_s=0.2, io_timeout_s=0.5
    )
    scorer = make_consumer(settings, settings.topic("frames"), group_id=settings.scorer.group_id)
    await scorer.start()
    polling = asyncio.create_task(_keep_polling(scorer))
    stopped = False
    try:
        async with running(settings) as bridge:
            await wait_until(lambda: bool(scorer.assignment()))
            await publish(settings, verdict("v1", "st-a", "reject"))
            await wait_until(lambda: _frame_is(modbus, 0, "v1"))

            await modbus.stop()  # the PLC goes away: v2 is applied but cannot be shown, so not committed
            await publish(settings, verdict("v2", "st-a", "pass"))
            await wait_until(lambda: _core_saw(bridge, "v2"))
            os.kill(pid, signal.SIGSTOP)  # Kafka freezes
            stopped = True
            modbus = ModbusPlcSimulator(port=port)  # the PLC is back: v2 is written, its commit hangs
            await modbus.start()
            await wait_until(lambda: _frame_is(modbus, 0, "v2"), timeout=20)

            beats = await _heartbeats(modbus, seconds=3.0)
            assert len(beats) >= 5, f"outputs froze with Kafka: heartbeats {beats}"

            async def failed_safe() -> bool:
                st = await modbus.station(0)
                return bool(st["fail_safe_count"] == 1 and not (await modbus.line())["scorer_ok"])

            await wait_until(failed_safe, timeout=10)
            assert (await modbus.station(0))["reject"]
            assert len(await _heartbeats(modbus, seconds=1.0)) >= 2  # still beating

            os.kill(pid, signal.SIGCONT)  # Kafka is back
            stopped = False
            await publish(settings, verdict("v3", "st-a", "pass"))  # the scorer's next verdict

            async def recovered() -> bool:
                line = await modbus.line()
                return bool(line["scorer_ok"] and (await modbus.station(0))["last_frame_id"] == "v3")

            await wait_until(recovered, timeout=40)
            assert not (await modbus.station(0))["reject"]
            await wait_until(lambda: _committed_total_is(settings, 3), timeout=30)
    finally:
        if stopped:
            os.kill(pid, signal.SIGCONT)
        polling.cancel()
        with contextlib.suppress(BaseException):
            await polling
        with contextlib.suppress(Exception):
            await asyncio.wait_for(scorer.stop(), 15)
        await modbus.stop()
        cleanup.close()


async def _committed_total_is(settings: Settings, total: int) -> bool:
    """The bridge group's committed offsets over every verdicts partition add up to ``total``."""
    group = settings.plc_bridge.group_id
    committed = [(await committed_and_end(settings, group, "verdicts", p))[0] or 0 for p in range(4)]
    return sum(committed) == total
