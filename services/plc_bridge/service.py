"""The PLC bridge's async shell: the ``verdicts`` topic -> the line's PLC (``lineguard plc-bridge``).

A thin shell around ``BridgeCore``, in four tasks on one event loop, so that the PLC's outputs
never wait for Kafka:

- **outputs** (its own clock, every ``poll_interval_ms`` and whenever a verdict arrives): read
  the PLC's part triggers, let the core expire deadlines and check the line, count the heartbeat,
  and write what changed to every PLC target. It starts before Kafka is reached and runs while
  Kafka is away, so the heartbeat keeps counting and the fail-safe is asserted on time.
- **intake**: read verdicts and apply them to the core, noting each applied one in the ledger
  (``ledger``: on disk before the PLC write that shows it, so a restart does not apply the
  verdicts Kafka replays again); an undecodable record fails its station safe and goes to the DLQ.
- **watch**: about once a second ask Kafka for the scorer group's members and committed offsets
  and the ``frames`` end offsets (the core's proof that a scorer works; see ``core``).
- **commit**: commit the offsets of verdicts the PLC already shows (at most every
  ``commit_interval_ms``). A PLC that cannot be written holds the commit; the state is written
  again (absolute values) until it lands.

Every Kafka call the outputs depend on is bounded by a timeout; none is awaited by the outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from services.plc_bridge import metrics
from services.plc_bridge.core import FailSafeCause, VerdictOutcome, core_from_settings
from services.plc_bridge.ledger import AppliedLedger
from services.plc_bridge.plc import ModbusPlc, OpcUaPlc, PlcError, PlcTarget
from shared.errors import ConfigError
from shared.settings import Settings
from shared.telemetry.logging import log_event, record_position

log = logging.getLogger("lineguard.plc_bridge")
SERVICE = "plc-bridge"
APPLIED_OUTCOMES = (VerdictOutcome.APPLIED, VerdictOutcome.AFTER_FAIL_SAFE, VerdictOutcome.LATE)
LINE_CAUSES = (FailSafeCause.SCORER_SILENT, FailSafeCause.FRAMES_STALLED, FailSafeCause.KAFKA_UNREACHABLE)
MAX_UNKNOWN_STATIONS_LOGGED = 64  # distinct unknown station ids logged once each, then only counted
MAX_DECIDED_AT = 10_000  # decision times awaiting their PLC write (histogram samples)
KAFKA_START_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 3.0  # each step of a stop (last commit, Kafka clients, each PLC): inside compose's 10 s


def targets_from_settings(settings: Settings) -> list[PlcTarget]:
    cfg = settings.plc_bridge
    targets: list[PlcTarget] = []
    if cfg.modbus_host:
        targets.append(ModbusPlc(cfg.modbus_host, cfg.modbus_port, cfg.modbus_device_id, cfg.io_timeout_s))
    if cfg.opcua_url:
        targets.append(OpcUaPlc(cfg.opcua_url, cfg.opcua_namespace, cfg.io_timeout_s))
    return targets


@dataclass
class _Kafka:
    consumer: Any  # verdicts, the bridge's group
    producer: Any  # dead letters
    admin: Any  # the scorer group's members and offsets, the frames partitions
    watcher: Any  # a consumer without a group: the frames end offsets


class PlcBridge:
    def __init__(
        self,
        settings: Settings,
        targets: list[PlcTarget] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings
        self.cfg = settings.plc_bridge
        self.targets = targets if targets is not None else targets_from_settings(settings)
        if not self.targets:
            raise ConfigError("no PLC target configured")
        self.clock = clock
        self.wall_clock_ns = wall_clock_ns
        self.core = core_from_settings(settings, clock())
        metrics.prepare(self.core.stations, [target.name for target in self.targets])
        self.ledger = AppliedLedger(self.cfg.ledger_path, self.core.stations, self.cfg.ledger_per_station)
        self.ready = asyncio.Event()
        # One Kafka call's limit. A slow answer inside the scorer timeout still counts as proof; a
        # call that hangs (a frozen broker) is given up so the next one can be asked.
        self.call_timeout_s = max(0.5, min(5.0, self.cfg.scorer_timeout_s))
        self._wake = asyncio.Event()  # a verdict arrived: write it now, not at the next tick
        self._outputs_done = asyncio.Event()
        self._commit_wanted = asyncio.Event()
        self._handled: dict[Any, int] = {}  # per partition: the offset after the last verdict applied
        self._committable: dict[Any, int] = {}  # ... after the last one the PLC shows
        self._committed: dict[Any, int] = {}
        self._decided_at: list[int] = []  # decision times awaiting their PLC write (for the histogram)
        self._failing: set[str] = set()  # targets whose last write failed
        self._unknown_stations: set[str] = set()  # logged once each (bounded)
        self._kafka_failing = False
        self._commit_failing = False

    # ---- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._run(stop)
        finally:
            self.ledger.close()  # after the outputs' last write, the only user of the ledger

    async def _run(self, stop: asyncio.Event) -> None:
        await self._connect_and_seed(stop)
        if stop.is_set():
            return
        self.core.watching_from(self.clock())
        outputs = asyncio.create_task(self._output_loop(), name="plc-outputs")
        kafka: _Kafka | None = None
        try:
            kafka = await self._start_kafka(stop, outputs)
            if kafka is not None:
                await self._serve(kafka, stop, outputs)
        finally:
            started = self.clock()
            self._outputs_done.set()
            self._wake.set()
            try:
                await outputs  # its last write (e.g. a fail-safe) reaches the PLC if it can
            finally:
                log_event(log, "plc outputs stopped", seconds=round(self.clock() - started, 3))
                if kafka is not None:
                    await self._commit(kafka.consumer, SHUTDOWN_TIMEOUT_S)  # what the PLC shows now
                    await self._close_kafka(kafka)
                for target in self.targets:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(target.close(), SHUTDOWN_TIMEOUT_S)
                log_event(log, "plc bridge stopped", seconds=round(self.clock() - started, 3))

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
                self._recover()
                for target in self.targets:
                    metrics.PLC_CONNECTED.labels(target.name).set(1)
                return
            except PlcError as exc:
                log_event(log, "plc not reachable, retrying", logging.WARNING, error=str(exc), retry_s=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 5.0)

    def _recover(self) -> None:
        """Which of the ledger's applied verdicts the PLC shows: their replays are only committed."""
        shown, unshown = {}, {}
        for station in self.core.stations:
            shown[station], unshown[station] = self.core.recover(station, self.ledger.frame_ids(station))
        log_event(
            log,
            "applied-verdicts ledger read",
            path=str(self.ledger.path),
            shown=shown,
            not_shown=unshown,
            torn_line_dropped=self.ledger.dropped_torn,
        )

    async def _start_kafka(self, stop: asyncio.Event, outputs: asyncio.Task[None]) -> _Kafka | None:
        """Start the Kafka clients, retrying while Kafka is away (the outputs run meanwhile)."""
        from shared.kafka.client import make_admin, make_consumer, make_producer

        delay = 0.5
        while not stop.is_set():
            kafka = _Kafka(
                make_consumer(
                    self.settings,
                    self.settings.topic("verdicts"),
                    group_id=self.cfg.group_id,
                    auto_offset_reset="latest",  # a fresh bridge acts on new verdicts, not last week's
                ),
                make_producer(self.settings),
                make_admin(self.settings, request_timeout_ms=int(self.call_timeout_s * 1000)),
                make_consumer(self.settings, group_id=None),
            )
            try:
                for start in (
                    kafka.consumer.start,
                    kafka.producer.start,
                    kafka.admin.start,
                    kafka.watcher.start,
                ):
                    await asyncio.wait_for(start(), KAFKA_START_TIMEOUT_S)
                return kafka
            except Exception as exc:  # aiokafka raises many types here; each means "not now"
                log_event(
                    log, "kafka not reachable, retrying", logging.WARNING, error=repr(exc), retry_s=delay
                )
                await self._close_kafka(kafka)
            if outputs.done():
                outputs.result()  # the outputs failed: that is the error to report
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 5.0)
        return None

    async def _serve(self, kafka: _Kafka, stop: asyncio.Event, outputs: asyncio.Task[None]) -> None:
        """Run intake, watch and commit until ``stop``; a task that fails ends the bridge with its error."""
        tasks = [
            asyncio.create_task(self._intake(kafka, stop), name="plc-intake"),
            asyncio.create_task(self._watch_loop(kafka), name="plc-watch"),
            asyncio.create_task(self._commit_loop(kafka.consumer), name="plc-commit"),
        ]
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([*tasks, outputs, stopped], return_when=asyncio.FIRST_COMPLETED)
            for task in [*tasks, outputs]:
                if task.done():
                    task.result()  # raises what stopped it
        finally:
            stopped.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, stopped, return_exceptions=True)

    async def _close_kafka(self, kafka: _Kafka) -> None:
        """Stop every client; bounded, so that an unreachable Kafka cannot hold the shutdown."""

        async def close(stop_client: Callable[[], Coroutine[Any, Any, Any]]) -> None:
            try:
                await asyncio.wait_for(stop_client(), SHUTDOWN_TIMEOUT_S)
            except Exception as exc:  # on the way out: note it, close the rest
                log_event(log, "kafka client did not close cleanly", logging.WARNING, error=repr(exc))

        clients = (kafka.consumer.stop, kafka.producer.stop, kafka.admin.close, kafka.watcher.stop)
        await asyncio.gather(*(close(stop_client) for stop_client in clients))

    # ---- outputs: the bridge's own clock --------------------------------------------------

    async def _output_loop(self) -> None:
        interval = self.cfg.poll_interval_ms / 1000
        next_beat = self.clock()
        while True:
            self._wake.clear()
            now = self.clock()
            if self.cfg.part_deadline_ms > 0:
                await self._read_triggers(now)
            self.core.tick(now)
            if now >= next_beat:
                next_beat = now + self.cfg.heartbeat_interval_s
                self.core.beat()
            self._report(now)
            applied = dict(self._handled)  # every verdict applied so far is in what is written next
            if await self._flush(last=self._outputs_done.is_set()):
                shown = {tp: offset for tp, offset in applied.items() if self._committable.get(tp) != offset}
                if shown:
                    self._committable.update(shown)
                    self._commit_wanted.set()
            if self._outputs_done.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, min(interval, next_beat - self.clock())))

    def _report(self, now: float) -> None:
        """Fail-safes, bounds and line state as metrics and logs."""
        by_cause: dict[FailSafeCause, list[str]] = {}
        for station, cause in self.core.take_fail_safes():
            metrics.FAIL_SAFES.labels(station, cause.value).inc()
            by_cause.setdefault(cause, []).append(station)
        for cause, stations in by_cause.items():
            log_event(log, "fail-safe reject asserted", logging.WARNING, cause=cause.value, stations=stations)
        for name, dropped in self.core.take_capped().items():
            metrics.EVICTIONS.labels(name).inc(dropped)
        if evicted := self.ledger.take_evicted():
            metrics.EVICTIONS.labels("ledger").inc(evicted)
        for action, count in self.core.take_replays().items():
            metrics.REPLAYED_VERDICTS.labels(action).inc(count)
        metrics.SCORER_OK.set(1 if self.core.line.scorer_ok else 0)
        for cause in LINE_CAUSES:
            metrics.LINE_FAIL_SAFE.labels(cause.value).set(1 if self.core.line_cause is cause else 0)
        metrics.STALLED_PARTITIONS.set(len(self.core.stalled_partitions(now)))
        for station in self.core.stations:
            metrics.PENDING_PARTS.labels(station).set(self.core.pending_parts(station))

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

    async def _flush(self, *, last: bool = False) -> bool:
        """Write what changed to every target; on any failure everything is written again later.

        ``last``: the write on the way out, skipped for targets already failing (a stop must not
        wait for connection attempts to a PLC that is away)."""
        stations, line = self.core.take_dirty()
        if not stations and line is None:
            return True
        # Every verdict in this state was noted before take_dirty: on disk before the PLC shows it.
        await self.ledger.sync()
        ok = True
        for target in self.targets:
            if last and target.name in self._failing:
                ok = False
                continue
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

    # ---- intake ---------------------------------------------------------------------------

    async def _intake(self, kafka: _Kafka, stop: asyncio.Event) -> None:
        consumer = kafka.consumer
        batch = await self._await_assignment(consumer, stop)
        self.ready.set()
        log_event(
            log, "plc bridge ready", stations=len(self.core.stations), targets=[t.name for t in self.targets]
        )
        while not stop.is_set():
            if not batch:
                batch = await consumer.getmany(timeout_ms=self.cfg.poll_interval_ms, max_records=500)
            for tp, records in batch.items():
                for record in records:
                    await self._handle(record, tp, kafka.producer)
                    self._handled[tp] = record.offset + 1
            if batch:
                self._wake.set()
            batch = {}

    async def _await_assignment(self, consumer: Any, stop: asyncio.Event) -> dict[Any, list[Any]]:
        """Until partitions are assigned; returns the records fetched meanwhile (to apply first)."""
        early: dict[Any, list[Any]] = {}
        while not consumer.assignment() and not stop.is_set():
            for tp, records in (await consumer.getmany(timeout_ms=100)).items():
                early.setdefault(tp, []).extend(records)
        # Resolve "latest" now and make it durable, so nothing produced after ready is missed, also
        # by a bridge that stops before its first commit; never past a record not yet applied.
        # Kafka may be away: retry, bounded.
        while not stop.is_set():
            try:
                starts = {}
                for tp in consumer.assignment():
                    if early.get(tp):
                        starts[tp] = early[tp][0].offset
                    else:
                        starts[tp] = await asyncio.wait_for(consumer.position(tp), self.call_timeout_s)
                await asyncio.wait_for(consumer.commit(starts), self.call_timeout_s)
                return early
            except Exception as exc:  # any aiokafka error or timeout: not yet
                log_event(log, "starting offsets not committed yet", logging.WARNING, error=repr(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        return early

    async def _handle(self, record: Any, tp: Any, producer: Any) -> None:
        from shared.messages.codec import REASONS, MessageError, decode
        from shared.messages.schemas import Verdict

        try:
            verdict = decode(record.value, Verdict)
        except MessageError as exc:
            key_station = _station_of(record.key, self.core.index)
            failed = self.core.undecodable(key_station, self.clock())
            self._wake.set()
            reason = exc.reason if exc.reason in REASONS else "other"
            metrics.DEAD_LETTERS.labels(reason).inc()
            log_event(
                log,
                "undecodable verdict: fail-safe, and to the dlq",
                logging.WARNING,
                reason=reason,
                **record_position(record),
                stations=failed,
            )
            await self._dead_letter(record, exc, producer)
            return
        outcome = self.core.apply_verdict(verdict, self.clock(), wall_ns=self.wall_clock_ns())
        metrics.VERDICTS.labels(outcome.value).inc()
        if outcome in APPLIED_OUTCOMES:
            self.ledger.note(verdict.station_id, verdict.frame_id)  # before any await: see _flush
            if len(self._decided_at) < MAX_DECIDED_AT:
                self._decided_at.append(verdict.decided_at)
            else:  # the PLC has been away long: the latency histogram can do without these
                metrics.EVICTIONS.labels("decided_at").inc()
        elif outcome is VerdictOutcome.UNKNOWN_STATION:
            if verdict.station_id in self._unknown_stations:
                return
            if len(self._unknown_stations) >= MAX_UNKNOWN_STATIONS_LOGGED:
                metrics.EVICTIONS.labels("unknown_stations").inc()
                return
            self._unknown_stations.add(verdict.station_id)
            log_event(log, "verdict for an unconfigured station", logging.WARNING, station=verdict.station_id)

    async def _dead_letter(self, record: Any, error: Any, producer: Any) -> None:
        """The record, whole, on the DLQ; Kafka errors that may pass are retried (intake waits)."""
        from aiokafka.errors import KafkaError

        from shared.messages.codec import encode
        from shared.messages.schemas import DeadLetter

        try:
            letter = DeadLetter.for_record(record, reason=error.reason, detail=str(error), service=SERVICE)
            value = encode(letter)
        except Exception as exc:  # a record no dead letter can hold: its station is already failed safe
            metrics.DEAD_LETTERS.labels("dead_letter_failed").inc()
            log_event(
                log,
                "dead letter could not be built",
                logging.ERROR,
                **record_position(record),
                error=repr(exc)[:500],
            )
            return
        while True:
            try:
                delivery = await producer.send(self.settings.topic("dlq"), value, key=record.key)
                await delivery
                return
            except KafkaError as exc:
                retriable = bool(getattr(exc, "retriable", False))
                log_event(
                    log,
                    "dead letter not delivered" + (", retrying" if retriable else ""),
                    logging.WARNING if retriable else logging.ERROR,
                    **record_position(record),
                    error=repr(exc),
                )
                if not retriable:
                    metrics.DEAD_LETTERS.labels("dead_letter_failed").inc()
                    return
                await asyncio.sleep(1.0)

    # ---- watch: proof of a working scorer --------------------------------------------------

    async def _watch_loop(self, kafka: _Kafka) -> None:
        every = min(1.0, self.cfg.scorer_timeout_s / 3)
        while True:
            await self._watch_once(kafka)
            await asyncio.sleep(every)

    async def _watch_once(self, kafka: _Kafka) -> None:
        from aiokafka import TopicPartition

        group = self.settings.scorer.group_id
        frames = self.settings.topic("frames")
        try:
            responses = await self._bounded(kafka.admin.describe_consumer_groups([group]))
            committed = await self._bounded(kafka.admin.list_consumer_group_offsets(group))
            (described,) = await self._bounded(kafka.admin.describe_topics([frames]))
            tps = [TopicPartition(frames, p["partition"]) for p in described["partitions"]]
            ends = await self._bounded(kafka.watcher.end_offsets(tps)) if tps else {}
            never = [tp for tp in tps if tp not in committed or committed[tp].offset < 0]
            # A group without an offset starts at the first frame (auto_offset_reset=earliest).
            firsts = await self._bounded(kafka.watcher.beginning_offsets(never)) if never else {}
        except Exception as exc:  # no answer is no proof either way; the core's clock decides
            if not self._kafka_failing:
                self._kafka_failing = True
                log_event(log, "kafka not answering", logging.WARNING, error=repr(exc))
            return
        if self._kafka_failing:
            self._kafka_failing = False
            log_event(log, "kafka answering again")
        now = self.clock()
        members = any(
            group_info["error_code"] == 0 and group_info["members"]
            for response in responses
            for group_info in response.to_object()["groups"]
        )
        if members:
            self.core.scorer_alive(now)
        else:
            self.core.kafka_ok(now)
        offsets = {
            tp.partition: (int(firsts[tp] if tp in firsts else committed[tp].offset), int(ends[tp]))
            for tp in tps
        }
        self.core.frames_progress(offsets, now)
        self._wake.set()

    async def _bounded(self, call: Coroutine[Any, Any, Any]) -> Any:
        return await asyncio.wait_for(call, self.call_timeout_s)

    # ---- commit ---------------------------------------------------------------------------

    async def _commit_loop(self, consumer: Any) -> None:
        interval_s = self.cfg.commit_interval_ms / 1000
        while True:
            await self._commit_wanted.wait()
            if interval_s > 0:  # one commit for what the PLC showed during the interval
                await asyncio.sleep(interval_s)
            self._commit_wanted.clear()
            if not await self._commit(consumer):
                await asyncio.sleep(1.0)
                self._commit_wanted.set()

    async def _commit(self, consumer: Any, timeout_s: float | None = None) -> bool:
        """Commit what the PLC shows (bounded); False to try again later."""
        assignment = consumer.assignment()
        offsets = {
            tp: offset
            for tp, offset in self._committable.items()
            if tp in assignment and self._committed.get(tp) != offset
        }
        if not offsets:
            return True
        try:
            await asyncio.wait_for(consumer.commit(offsets), timeout_s or self.call_timeout_s)
        except Exception as exc:  # Kafka away, a rebalance, a timeout: the offsets are committed later
            metrics.COMMITS.labels("error").inc()
            if not self._commit_failing:
                self._commit_failing = True
                log_event(log, "offset commit failed, retrying", logging.WARNING, error=repr(exc))
            return False
        metrics.COMMITS.labels("ok").inc()
        if self._commit_failing:
            self._commit_failing = False
            log_event(log, "offset commits recovered")
        self._committed.update(offsets)
        return True


def _station_of(key: bytes | None, stations: dict[str, int]) -> str | None:
    """The configured station a verdicts record's key names (the key is the station id), or None."""
    if not key or len(key) > 64:
        return None
    try:
        station = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return station if station in stations else None
