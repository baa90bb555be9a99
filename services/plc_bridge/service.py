"""The PLC bridge's async shell: the ``verdicts`` topic -> the line's PLC (``lineguard plc-bridge``).

A thin shell around ``BridgeCore``: read verdicts, read the PLC's part triggers, watch the
scorer's consumer group, then write the whole changed state to every PLC target and only then
commit the consumed offsets. A PLC that cannot be written holds the commit; the state is written
again (absolute values) until it lands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from services.plc_bridge import metrics
from services.plc_bridge.core import VerdictOutcome, core_from_settings
from services.plc_bridge.plc import ModbusPlc, OpcUaPlc, PlcError, PlcTarget
from shared.errors import ConfigError
from shared.settings import Settings
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.plc_bridge")
SERVICE = "plc-bridge"


def targets_from_settings(settings: Settings) -> list[PlcTarget]:
    cfg = settings.plc_bridge
    targets: list[PlcTarget] = []
    if cfg.modbus_host:
        targets.append(ModbusPlc(cfg.modbus_host, cfg.modbus_port, cfg.modbus_device_id, cfg.io_timeout_s))
    if cfg.opcua_url:
        targets.append(OpcUaPlc(cfg.opcua_url, cfg.opcua_namespace, cfg.io_timeout_s))
    return targets


class PlcBridge:
    def __init__(
        self,
        settings: Settings,
        targets: list[PlcTarget] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.cfg = settings.plc_bridge
        self.targets = targets if targets is not None else targets_from_settings(settings)
        if not self.targets:
            raise ConfigError("no PLC target configured")
        self.clock = clock
        self.core = core_from_settings(settings, clock())
        self.ready = asyncio.Event()
        self._decided_at: list[int] = []  # decision times awaiting their PLC write (for the histogram)
        self._failing: set[str] = set()  # targets whose last write failed

    # ---- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        from shared.kafka.client import make_admin, make_consumer, make_producer

        await self._connect_and_seed(stop)
        if stop.is_set():
            return
        consumer = make_consumer(
            self.settings,
            self.settings.topic("verdicts"),
            group_id=self.cfg.group_id,
            auto_offset_reset="latest",  # a fresh bridge acts on new verdicts, not last week's
        )
        producer = make_producer(self.settings)
        admin = make_admin(self.settings)
        await consumer.start()
        await producer.start()
        await admin.start()
        try:
            await self._await_assignment(consumer, stop)
            self.ready.set()
            log_event(
                log,
                "plc bridge ready",
                stations=len(self.core.stations),
                targets=[t.name for t in self.targets],
            )
            await self._loop(consumer, producer, admin, stop)
        finally:
            with contextlib.suppress(Exception):
                await self._flush()  # last state (e.g. fail-safe) reaches the PLC if it can
            await consumer.stop()
            await producer.stop()
            await admin.close()
            for target in self.targets:
                await target.close()

    async def _connect_and_seed(self, stop: asyncio.Event) -> None:
        """Connect every target (retrying), then continue from the first target's counters."""
        delay = 0.2
        while not stop.is_set():
            try:
                for target in self.targets:
                    await target.connect()
                primary = self.targets[0]
                for i, station in enumerate(self.core.stations):
                    self.core.seed(station, await primary.read_station(i, station))
                for target in self.targets:
                    metrics.PLC_CONNECTED.labels(target.name).set(1)
                return
            except PlcError as exc:
                log_event(log, "plc not reachable, retrying", logging.WARNING, error=str(exc), retry_s=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 5.0)

    @staticmethod
    async def _await_assignment(consumer: Any, stop: asyncio.Event) -> None:
        while not consumer.assignment() and not stop.is_set():
            await consumer.getmany(timeout_ms=100)
        for tp in consumer.assignment():
            await consumer.position(tp)  # resolve "latest" now, so nothing produced after ready is missed
        await consumer.commit()  # a durable starting point for a fresh group

    # ---- the loop -------------------------------------------------------------------------

    async def _loop(self, consumer: Any, producer: Any, admin: Any, stop: asyncio.Event) -> None:
        liveness_every = min(1.0, self.cfg.scorer_timeout_s / 3)
        next_beat = next_liveness = self.clock()
        uncommitted = False
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=self.cfg.poll_interval_ms, max_records=500)
            for tp, records in batch.items():
                for record in records:
                    await self._handle(record, tp, producer)
                    uncommitted = True
            now = self.clock()
            if self.cfg.part_deadline_ms > 0:
                await self._read_triggers(now)
            if now >= next_liveness:
                next_liveness = now + liveness_every
                await self._check_scorer_group(admin, now)
            for station in self.core.tick(now):
                cause = "scorer_silent" if not self.core.line.scorer_ok else "part_deadline"
                metrics.FAIL_SAFES.labels(station, cause).inc()
                log_event(log, "fail-safe reject asserted", logging.WARNING, station=station, cause=cause)
            if now >= next_beat:
                next_beat = now + self.cfg.heartbeat_interval_s
                self.core.beat()
            metrics.SCORER_OK.set(1 if self.core.line.scorer_ok else 0)
            for station in self.core.stations:
                metrics.PENDING_PARTS.labels(station).set(self.core.pending_parts(station))
            if await self._flush() and uncommitted:
                await consumer.commit()  # only what the PLC now shows
                uncommitted = False

    async def _handle(self, record: Any, tp: Any, producer: Any) -> None:
        from shared.messages.codec import MessageError, decode, encode
        from shared.messages.schemas import DeadLetter, Verdict

        try:
            verdict = decode(record.value, Verdict)
        except MessageError as exc:
            metrics.BAD_MESSAGES.labels(exc.reason).inc()
            log_event(
                log,
                "undecodable verdict sent to dlq",
                logging.WARNING,
                reason=exc.reason,
                partition=tp.partition,
                offset=record.offset,
            )
            letter = DeadLetter.for_record(record, reason=exc.reason, detail=str(exc), service=SERVICE)
            await producer.send_and_wait(self.settings.topic("dlq"), encode(letter), key=record.key)
            return
        outcome = self.core.apply_verdict(verdict, self.clock())
        metrics.VERDICTS.labels(outcome.value).inc()
        if outcome is VerdictOutcome.APPLIED or outcome is VerdictOutcome.AFTER_FAIL_SAFE:
            self._decided_at.append(verdict.decided_at)
        elif outcome is VerdictOutcome.UNKNOWN_STATION:
            log_event(log, "verdict for an unconfigured station", logging.WARNING, station=verdict.station_id)

    async def _read_triggers(self, now: float) -> None:
        primary = self.targets[0]
        for i, station in enumerate(self.core.stations):
            try:
                counter = await primary.read_part_trigger(i, station)
            except PlcError as exc:
                log_event(
                    log, "part trigger read failed", logging.WARNING, target=primary.name, error=str(exc)
                )
                return
            self.core.part_trigger(station, counter, now)

    async def _check_scorer_group(self, admin: Any, now: float) -> None:
        """The scorer is alive while its consumer group has members (Kafka's own heartbeats)."""
        try:
            responses = await asyncio.wait_for(
                admin.describe_consumer_groups([self.settings.scorer.group_id]), timeout=5.0
            )
        except Exception as exc:  # broker hiccup: no proof either way; verdicts still count
            log_event(log, "scorer group check failed", logging.WARNING, error=str(exc))
            return
        for response in responses:
            for group in response.to_object()["groups"]:
                if group["error_code"] == 0 and group["members"]:
                    self.core.scorer_alive(now)
                    return

    async def _flush(self) -> bool:
        """Write what changed to every target; on any failure everything is written again later."""
        stations, line = self.core.take_dirty()
        if not stations and line is None:
            return True
        ok = True
        for target in self.targets:
            try:
                for station, state in stations.items():
                    await target.write_station(self.core.index[station], station, state)
                if line is not None:
                    await target.write_line(line, len(self.core.stations))
                metrics.PLC_WRITES.labels(target.name, "ok").inc()
                metrics.PLC_CONNECTED.labels(target.name).set(1)
                if target.name in self._failing:
                    self._failing.discard(target.name)
                    log_event(log, "plc writes recovered", target=target.name)
            except PlcError as exc:
                ok = False
                metrics.PLC_WRITES.labels(target.name, "error").inc()
                metrics.PLC_CONNECTED.labels(target.name).set(0)
                if target.name not in self._failing:  # once per outage, not once per retry
                    self._failing.add(target.name)
                    log_event(log, "plc write failed", logging.ERROR, target=target.name, error=str(exc))
        if not ok:
            self.core.mark_all_dirty()
            return False
        now_ns = time.time_ns()
        for decided_at in self._decided_at:
            metrics.VERDICT_TO_PLC_SECONDS.observe(max(now_ns - decided_at, 0) / 1e9)
        self._decided_at.clear()
        return True
