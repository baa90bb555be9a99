"""The chaos campaign: frames with hostile records mixed in, scorers and brokers SIGKILLed at random
moments, and afterwards an account of every record: exactly one verdict or one dead letter each.

    # the campaign: 3-node cluster, two scorers, 10,000 records (5 % hostile), faults
    nice -n 10 .venv/bin/python -m benchmarks.chaos --frames 10000 --rate 30
    # the fuzz run: one broker, no faults, 100,000 records; good-frame throughput vs a clean run
    nice -n 10 .venv/bin/python -m benchmarks.chaos --fuzz-only --frames 100000

Chaos mode (default): a local KRaft cluster of ``--brokers`` nodes (topics with that many replicas,
``min.insync.replicas`` one fewer), ``--scorers`` separate ``lineguard scorer`` processes (a
supervisor restarts any that exits, as a plant's would), and a sender that paces ``--frames``
records at ``--rate`` per second, ``--hostile`` of them from ``tests.support.fuzz`` (mutated real
frames: bytes, headers, keys, sizes up to the topic's limit). Meanwhile, at random moments in the
middle of the stream: ``--scorer-kills`` scorer SIGKILLs (one of them while the group rebalances
after the previous one), one broker SIGKILLed and restarted, then the leader of frames partition 0
SIGKILLed and restarted. The rest of the line runs too: ``lineguard explainer`` (no VLM: fallback
reports) and ``lineguard plc-bridge`` (Modbus TCP into the simulated PLC of ``lineguard plc-sim``,
served from a thread of this process and read every ``--plc-sample-s``), each SIGKILLed once at a
random moment and restarted at once.

Fuzz-only mode: no faults, ``--brokers 1`` by default. A clean run (``--clean-frames`` good frames)
and the fuzz run are each put on the topic first and then drained by the scorers; good frames per
second from the first to the last good verdict, fuzz / clean.

Afterwards, read with ``read_committed``: every acknowledged record has exactly one verdict (by its
frame id) or one dead letter (by its partition and offset), never both; no frame id twice on
verdicts, no record twice on the dead-letter topic; nothing left uncommitted on frames (the
scorers' committed offsets reach the end of every partition). In chaos mode also
(``benchmarks.chaos_checks``): every reject/review verdict has exactly one defect event and one
report; no duplicates on ``defects``, ``reports`` or ``alerts``; the PLC never showed ``pass`` for a
frame without a committed ``pass`` verdict of its station (the sampled decision and last frame id),
and each station's pass counter at the end does not exceed its committed pass verdicts. Per fault,
the seconds to the line working again: the next verdict (scorer and broker faults), the next report
(explainer) or the next PLC heartbeat (bridge). Latency is capture to the verdict being read, for
good frames. Prints a summary (``--json FILE`` writes it); exit 1 if any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import platform
import random
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka.errors import KafkaTimeoutError

from benchmarks import chaos_checks
from benchmarks.harness import print_results
from services.camera_sim.core import SimOptions, load_samples
from services.camera_sim.images import sample_image
from services.camera_sim.truth import FRAME_ID_HEADER
from services.demo.plc import PlcOnThread
from shared.kafka.broker import free_port
from shared.kafka.client import ensure_topics, make_consumer, make_producer
from shared.kafka.cluster import KafkaCluster
from shared.messages.codec import encode
from shared.messages.schemas import AlertEvent, DeadLetter, DefectEvent, Frame, Report, Verdict
from shared.settings import Settings
from tests.support.broker import throwaway_cluster
from tests.support.fuzz import BIG_KINDS, HOSTILE_KINDS, hostile_record
from tests.support.line import scorer_process
from tests.support.models import PRODUCTS, fit_synthetic_model
from tests.support.processes import ServiceProcess, service_env
from tests.support.topics import TopicReader, committed_and_end, partition_leaders

SIZE = 96  # frame and model input size: small, so two cores score many
CAMERAS = 4


@dataclass
class Sent:
    """One record the frames topic acknowledged."""

    index: int
    kind: str  # "good" or a hostile kind
    frame_id: str | None  # the id a verdict for it carries (None: it can only be a dead letter)
    partition: int
    offset: int
    captured_at: int


@dataclass
class Fault:
    what: str
    at: float  # time.time()
    detail: str = ""


@dataclass
class Run:
    sent: list[Sent] = field(default_factory=list)
    send_failures: int = 0
    enqueue_retries: int = 0  # records the producer could not queue in time, queued again
    faults: list[Fault] = field(default_factory=list)
    scorer_exits: list[str] = field(default_factory=list)  # exits nobody asked for
    sidecar_exits: list[str] = field(default_factory=list)  # explainer / bridge exits nobody asked for
    plc_samples: list[chaos_checks.PlcSample] = field(default_factory=list)
    heartbeats: list[tuple[float, int]] = field(default_factory=list)  # (time.time(), PLC heartbeat)


# ---- records ------------------------------------------------------------------------------------


class Records:
    """The records of a run: good frames from the camera simulator's pool (its JPEGs), and hostile
    ones mutated from them; at most ``max_big`` of the megabyte kinds."""

    def __init__(self, run_id: str, hostile: float, seed: int, max_big: int) -> None:
        samples = load_samples(SimOptions(products=PRODUCTS, size=SIZE, pool=32, defect_rate=0.3, seed=seed))
        self.images = [sample_image(sample, SIZE)[0] for sample in samples]
        self.run_id, self.hostile, self.max_big = run_id, hostile, max_big
        self.rng = np.random.default_rng(seed)
        self.big = 0

    def make(
        self, index: int
    ) -> tuple[str, bytes | None, bytes | None, list[tuple[str, bytes | None]], str | None]:
        """(kind, key, value, headers, verdict frame id) of record ``index``, captured now."""
        camera = f"cam-{index % CAMERAS}"
        frame = Frame(
            frame_id=f"{self.run_id}-{index:07d}",
            line_id="line-1",
            station_id=f"st-{index % CAMERAS}",
            camera_id=camera,
            captured_at=time.time_ns(),
            encoding="jpeg",
            image=self.images[index % len(self.images)],
        )
        if self.rng.random() >= self.hostile:
            return (
                "good",
                camera.encode(),
                encode(frame),
                [(FRAME_ID_HEADER, frame.frame_id.encode())],
                frame.frame_id,
            )
        kinds = [k for k in HOSTILE_KINDS if k not in BIG_KINDS or self.big < self.max_big]
        kind = kinds[int(self.rng.integers(0, len(kinds)))]
        self.big += kind in BIG_KINDS
        record = hostile_record(kind, frame, self.rng)
        return kind, record.key, record.value, record.headers, record.frame_id


_SEND_WINDOW_RECORDS = 256
_SEND_WINDOW_BYTES = 64 << 20  # a few maximal records: more only waits in the producer and times out
# The producer gives up queueing a record after its request timeout when the partition's previous
# batch is still on its way (a slow broker on loaded cores): such a record was never sent, so it is
# queued again, for as long as this; five request timeouts were not always enough on a loaded machine
# (174 of 100,000 records in one fuzz run).
_ENQUEUE_GIVE_UP_S = 900.0


async def send_records(
    settings: Settings, records: Records, count: int, rate: float | None, partitions: int, run: Run
) -> None:
    """``count`` records, paced at ``rate`` per second (None: as fast as the broker takes them),
    round-robin over the partitions; each acknowledged one goes into ``run.sent``. At most
    ``_SEND_WINDOW_RECORDS`` records and ``_SEND_WINDOW_BYTES`` bytes wait for acknowledgement."""
    topic = settings.topic("frames")
    window = asyncio.Condition()
    in_flight = {"records": 0, "bytes": 0}
    pending: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    async with make_producer(settings, linger_ms=5) as producer:

        async def one(index: int, record: tuple[str, Any, Any, Any, str | None], size: int) -> None:
            kind, key, value, headers, frame_id = record
            captured = time.time_ns()
            try:
                give_up = time.monotonic() + _ENQUEUE_GIVE_UP_S
                while True:
                    try:
                        future = await producer.send(
                            topic, value, key=key, headers=headers, partition=index % partitions
                        )
                        break
                    except KafkaTimeoutError:  # never queued, so never written: safe to try again
                        run.enqueue_retries += 1
                        if time.monotonic() > give_up:
                            raise
                meta = await future
                run.sent.append(Sent(index, kind, frame_id, meta.partition, meta.offset, captured))
            except Exception as exc:  # a send the broker never acknowledged: reported, not counted
                run.send_failures += 1
                print(f"  send {index} ({kind}) failed: {type(exc).__name__}: {exc}", flush=True)
            finally:
                async with window:
                    in_flight["records"] -= 1
                    in_flight["bytes"] -= size
                    window.notify_all()

        def room_for(size: int) -> bool:
            if in_flight["records"] == 0:
                return True  # one record always goes, however large
            return (
                in_flight["records"] < _SEND_WINDOW_RECORDS
                and in_flight["bytes"] + size <= _SEND_WINDOW_BYTES
            )

        for index in range(count):
            if rate is not None:
                delay = started + index / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            record = records.make(index)
            _, key, value, headers, _ = record
            size = len(key or b"") + len(value or b"") + sum(len(k) + len(v or b"") for k, v in headers)
            async with window:
                await window.wait_for(functools.partial(room_for, size))
                in_flight["records"] += 1
                in_flight["bytes"] += size
            task = asyncio.create_task(one(index, record, size))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)


# ---- processes ----------------------------------------------------------------------------------


class Scorers:
    """``count`` ``lineguard scorer`` processes kept running: any that exits is started again; exits
    this class did not cause are recorded."""

    def __init__(self, settings: Settings, model_dir: Path, work: Path, count: int, run: Run) -> None:
        self.settings, self.model_dir, self.work, self.run = settings, model_dir, work, run
        self.slots: list[ServiceProcess | None] = [None] * count
        self.killed: set[int] = set()  # pids this class SIGKILLed
        self.starts = 0

    def _start(self, slot: int) -> ServiceProcess:
        self.starts += 1
        process = scorer_process(
            self.settings,
            self.model_dir,
            self.work / f"{self.settings.topic_prefix}-scorer-{slot}-{self.starts}.log",
        )
        self.slots[slot] = process
        return process

    async def start_all(self) -> None:
        processes = [self._start(slot) for slot in range(len(self.slots))]
        for process in processes:
            await process.wait_for_log('"partitions_assigned"', 300)

    def kill(self, slot: int) -> None:
        process = self.slots[slot]
        if process is not None and process.process.poll() is None:
            self.killed.add(process.process.pid)
            process.kill()

    async def supervise(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for slot, process in enumerate(self.slots):
                if process is None or process.process.poll() is None:
                    continue
                if process.process.pid not in self.killed:
                    code = process.process.returncode
                    self.run.scorer_exits.append(f"slot {slot} exited {code}: {process.log_tail(600)}")
                    print(f"  scorer {slot} exited by itself ({code})", flush=True)
                self._start(slot)
            await asyncio.sleep(0.5)

    def kill_remaining(self) -> None:
        for process in self.slots:
            if process is not None and process.process.poll() is None:
                process.kill()

    async def stop_all(self) -> None:
        for process in self.slots:
            if process is not None and process.process.poll() is None:
                try:
                    await process.terminate(60)
                except AssertionError as error:
                    self.run.scorer_exits.append(f"did not stop on SIGTERM: {error}")


STATIONS = [f"st-{i}" for i in range(CAMERAS)]
SIDECAR_READY = {"explainer": "explainer_started", "plc-bridge": "plc bridge ready"}


class Sidecars:
    """``lineguard explainer`` (no VLM: fallback reports) and ``lineguard plc-bridge`` (Modbus, into
    the simulated PLC this process serves), each kept running like the scorers."""

    def __init__(self, settings: Settings, plc_port: int, work: Path, run: Run, deadline_ms: int) -> None:
        prefix = settings.topic_prefix
        explainer = {"group_id": f"{prefix}-explainer", "report_dir": str(work / f"{prefix}-reports")}
        plc = {
            "stations": STATIONS,
            "modbus_host": "127.0.0.1",
            "modbus_port": plc_port,
            "group_id": f"{prefix}-plc",
            "verdict_deadline_ms": deadline_ms,
            "ledger_path": str(work / f"{prefix}-plc-ledger.jsonl"),  # this run's, across its bridge kill
        }
        self.envs = {
            "explainer": service_env(settings, explainer=explainer),
            "plc-bridge": service_env(settings, plc_bridge=plc),
        }
        self.work, self.prefix, self.run = work, prefix, run
        self.processes: dict[str, ServiceProcess] = {}
        self.killed: set[int] = set()
        self.starts = 0

    def _start(self, name: str) -> ServiceProcess:
        self.starts += 1
        log = self.work / f"{self.prefix}-{name}-{self.starts}.log"
        process = ServiceProcess([name], self.envs[name], log)
        self.processes[name] = process
        return process

    async def start_all(self) -> None:
        for name in SIDECAR_READY:
            self._start(name)
        for name, event in SIDECAR_READY.items():
            await self.processes[name].wait_for_log(event, 300)

    def kill(self, name: str) -> None:
        process = self.processes[name]
        if process.process.poll() is None:
            self.killed.add(process.process.pid)
            process.kill()
        self._start(name)  # at once, as a plant's supervisor does

    def kill_remaining(self) -> None:
        for process in self.processes.values():
            if process.process.poll() is None:
                process.kill()

    async def supervise(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for name, process in list(self.processes.items()):
                if process.process.poll() is None or process.process.pid in self.killed:
                    continue
                code = process.process.returncode
                self.run.sidecar_exits.append(f"{name} exited {code}: {process.log_tail(600)}")
                print(f"  {name} exited by itself ({code})", flush=True)
                self._start(name)
            await asyncio.sleep(0.5)

    async def stop_all(self) -> None:
        for name, process in self.processes.items():
            if process.process.poll() is None:
                try:
                    await process.terminate(60)
                except AssertionError as error:
                    self.run.sidecar_exits.append(f"{name} did not stop on SIGTERM: {error}")


async def sample_plc(plc: PlcOnThread, run: Run, every_s: float, stop: asyncio.Event) -> None:
    """Each station's decision and last frame id every ``every_s``: kept where two reads 50 ms apart
    agree (the bridge writes a station in several requests); the line's heartbeat each time."""
    while not stop.is_set():
        for index, station in enumerate(STATIONS):
            first = await asyncio.to_thread(plc.station, index)
            await asyncio.sleep(0.05)
            second = await asyncio.to_thread(plc.station, index)
            if first == second:
                run.plc_samples.append(
                    chaos_checks.PlcSample(
                        time.time(),
                        station,
                        int(second["last_decision"]),
                        str(second["last_frame_id"]),
                        int(second["pass_count"]),
                    )
                )
        line = await asyncio.to_thread(plc.line)
        run.heartbeats.append((time.time(), int(line["heartbeat"])))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


async def kill_sidecars(args: argparse.Namespace, sidecars: Sidecars, run: Run) -> None:
    """The explainer and the PLC bridge SIGKILLed once each (restarted at once), at random moments
    between 10 % and 80 % of the sending time (their own random stream: the scorer and broker
    faults fall where they did before these were added)."""
    span = args.frames / args.rate
    rng = random.Random(args.seed + 1)
    plan = sorted((rng.uniform(0.1, 0.8) * span, name) for name in ("explainer", "plc bridge"))
    started = time.monotonic()
    for moment, what in plan:
        await asyncio.sleep(max(0.0, started + moment - time.monotonic()))
        run.faults.append(Fault(f"{what} SIGKILL", time.time(), "restarted at once"))
        print(f"  fault: {what} SIGKILL", flush=True)
        sidecars.kill(what.replace(" ", "-"))


async def chaos(
    args: argparse.Namespace, cluster: KafkaCluster, settings: Settings, scorers: Scorers, run: Run
) -> None:
    """The faults, at random moments between 10 % and 80 % of the sending time."""
    span = args.frames / args.rate
    rng = random.Random(args.seed)
    plan = sorted(rng.uniform(0.1, 0.8) * span for _ in range(args.scorer_kills + 2))
    broker_moments = set(rng.sample(range(len(plan)), 2)) if args.brokers > 1 else set()
    started = time.monotonic()
    broker_faults = 0
    rebalance_kill_done = False
    for number, moment in enumerate(plan):
        await asyncio.sleep(max(0.0, started + moment - time.monotonic()))
        if number in broker_moments:
            if broker_faults == 0:
                victim = rng.choice([node.node_id for node in cluster.nodes])
                what = "broker SIGKILL"
            else:
                victim = (await partition_leaders(settings, "frames"))[("frames", 0)]
                what = "frames partition 0 leader SIGKILL"
            broker_faults += 1
            run.faults.append(Fault(what, time.time(), f"node {victim}"))
            print(f"  fault: {what} (node {victim})", flush=True)
            await asyncio.to_thread(cluster.kill, victim)
            await asyncio.sleep(args.broker_down_s)
            await asyncio.to_thread(cluster.start_node, victim)
            run.faults.append(Fault("broker restarted", time.time(), f"node {victim}"))
            continue
        slot = rng.randrange(len(scorers.slots))
        run.faults.append(Fault("scorer SIGKILL", time.time(), f"slot {slot}"))
        print(f"  fault: scorer SIGKILL (slot {slot})", flush=True)
        scorers.kill(slot)
        if not rebalance_kill_done and len(scorers.slots) > 1:
            # The other scorer while the group rebalances (the killed one's replacement joining).
            rebalance_kill_done = True
            await asyncio.sleep(3.0)
            other = (slot + 1) % len(scorers.slots)
            run.faults.append(Fault("scorer SIGKILL during rebalance", time.time(), f"slot {other}"))
            print(f"  fault: scorer SIGKILL during the rebalance (slot {other})", flush=True)
            scorers.kill(other)


# ---- accounting ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def account(run: Run, verdicts: TopicReader, dlq: TopicReader) -> dict[str, Any]:
    """Every acknowledged record: exactly one verdict or one dead letter; the problems named."""
    verdict_ids = Counter(v.frame_id for v in verdicts.received.values)
    letters = Counter((d.source_partition, d.source_offset) for d in dlq.received.values)
    known_ids = {s.frame_id for s in run.sent if s.frame_id is not None}
    missing, both = [], []
    for sent in run.sent:
        outputs = (verdict_ids.get(sent.frame_id, 0) if sent.frame_id else 0) + letters.get(
            (sent.partition, sent.offset), 0
        )
        if outputs == 0:
            missing.append(sent.frame_id or f"{sent.partition}:{sent.offset}")
        elif outputs > 1 and sent.frame_id and verdict_ids[sent.frame_id] == 1:
            both.append(sent.frame_id)
    return {
        "records": len(run.sent),
        "verdicts": sum(verdict_ids.values()),
        "dead_letters": sum(letters.values()),
        "missing": missing[:20],
        "missing_count": len(missing),
        "duplicate_verdicts": sorted(f for f, n in verdict_ids.items() if n > 1)[:20],
        "duplicate_dead_letters": sorted(f"{p}:{o}" for (p, o), n in letters.items() if n > 1)[:20],
        "verdict_and_dead_letter": both[:20],
        "unknown_verdicts": sorted(set(verdict_ids) - known_ids)[:20],
    }


def latencies_ms(run: Run, verdicts: TopicReader) -> dict[str, float]:
    captured = {s.frame_id: s.captured_at for s in run.sent if s.kind == "good"}
    values = [
        (arrived - captured[v.frame_id]) / 1e6
        for v, arrived in zip(verdicts.received.values, verdicts.received.arrived_ns, strict=True)
        if v.frame_id in captured
    ]
    return {
        "p50": round(percentile(values, 50), 1),
        "p99": round(percentile(values, 99), 1),
        "max": round(max(values, default=float("nan")), 1),
    }


def good_throughput(run: Run, verdicts: TopicReader) -> float:
    """Good frames per second from the first to the last good verdict read (a drained backlog)."""
    good = {s.frame_id for s in run.sent if s.kind == "good"}
    times = sorted(
        t
        for v, t in zip(verdicts.received.values, verdicts.received.arrived_ns, strict=True)
        if v.frame_id in good
    )
    skip = min(len(times) // 10, 32)  # leave out the start-up batches
    if len(times) - skip < 2:
        return float("nan")
    return (len(times) - 1 - skip) / ((times[-1] - times[skip]) / 1e9)


def recovery(run: Run, verdicts: TopicReader, reports: TopicReader | None) -> list[dict[str, Any]]:
    """Per fault: the first output after it that shows its part of the line working again (a
    verdict after a scorer or broker fault, a report after an explainer kill, a PLC heartbeat after
    a bridge kill), and the worst latency of frames captured within 10 s after it."""
    captured = {s.frame_id: s.captured_at for s in run.sent if s.kind == "good"}
    arrivals = list(zip(verdicts.received.values, verdicts.received.arrived_ns, strict=True))
    timelines = {
        "verdicts": [t / 1e9 for t in verdicts.received.arrived_ns],
        "reports": [t / 1e9 for t in reports.received.arrived_ns] if reports else [],
    }
    out = []
    for fault in run.faults:
        at = int(fault.at * 1e9)
        timeline = chaos_checks.fault_timeline(fault.what)
        timelines["plc_heartbeat"] = chaos_checks.changes_after(fault.at, run.heartbeats)
        window = [
            (t - captured[v.frame_id]) / 1e6
            for v, t in arrivals
            if v.frame_id in captured and at <= captured[v.frame_id] < at + 10_000_000_000
        ]
        out.append(
            {
                "fault": fault.what,
                "detail": fault.detail,
                "line_again": timeline,
                "first_output_after_s": chaos_checks.seconds_to_next(fault.at, timelines[timeline]),
                "worst_latency_next_10s_ms": round(max(window), 1) if window else None,
            }
        )
    return out


async def nothing_stalled(settings: Settings, partitions: int) -> dict[str, Any]:
    """The scorers' committed offsets against the end of each frames partition."""
    from aiokafka import TopicPartition

    tps = [TopicPartition(settings.topic("frames"), p) for p in range(partitions)]
    async with make_consumer(settings, group_id=settings.scorer.group_id) as consumer:
        ends = await consumer.end_offsets(tps)
        committed = {tp.partition: await consumer.committed(tp) for tp in tps}
    behind = {p: ends[TopicPartition(settings.topic("frames"), p)] - (c or 0) for p, c in committed.items()}
    return {"uncommitted_frames": sum(behind.values()), "by_partition": behind}


async def wait_accounted(
    run: Run, verdicts: TopicReader, dlq: TopicReader, idle_s: float, limit_s: float
) -> float:
    """Until every record has an output, or nothing new arrived for ``idle_s``; the seconds waited."""
    started = time.monotonic()
    last, last_change = -1, time.monotonic()
    while time.monotonic() - started < limit_s:
        have = len(verdicts) + len(dlq)
        if have >= len(run.sent) and account(run, verdicts, dlq)["missing_count"] == 0:
            break
        if have != last:
            last, last_change = have, time.monotonic()
        elif time.monotonic() - last_change > idle_s:
            break
        await asyncio.sleep(1.0)
    await asyncio.sleep(3.0)  # anything extra (a duplicate) would arrive now
    return time.monotonic() - started


# ---- runs ---------------------------------------------------------------------------------------


def scorer_section(settings: Settings, prefix: str, args: argparse.Namespace) -> Settings:
    scorer = {
        "group_id": f"{prefix}-scorer",
        "transactional_id_prefix": f"{prefix}-txn",
        "session_timeout_ms": 10_000,
        "model_workers": 1,
        "torch_threads": 1,
        "search_threads": 1,
        "decode_threads": 1,
        "max_batch": args.batch,
        "watch_models": False,
    }
    return settings.model_copy(
        update={"topic_prefix": prefix, "scorer": settings.scorer.model_copy(update=scorer)}
    )


async def behind(settings: Settings, group_id: str, name: str, reader: TopicReader) -> int:
    """Records of topic ``name`` that ``reader`` has read and the group has not committed yet (0: it
    has caught up)."""
    count = 0
    for partition, next_offset in reader.next_offsets().items():
        committed, _ = await committed_and_end(settings, group_id, name, partition)
        count += max(0, next_offset - (committed or 0))
    return count


async def wait_downstream(
    settings: Settings, run: Run, verdicts: TopicReader, reports: TopicReader, args: argparse.Namespace
) -> float:
    """Until the explainer reported every reject/review verdict and the bridge committed every
    verdict (its commits follow what the PLC shows), or nothing moved for ``idle_s``."""
    defective = {v.frame_id for v in verdicts.received.values if v.decision in ("reject", "review")}
    started = time.monotonic()
    last, last_change = None, time.monotonic()
    while time.monotonic() - started < args.drain_limit_s:
        reported = {r.frame_id for r in reports.received.values}
        bridge = await behind(settings, f"{settings.topic_prefix}-plc", "verdicts", verdicts)
        state = (len(defective - reported), bridge)
        if state == (0, 0):
            break
        if state != last:
            last, last_change = state, time.monotonic()
        elif time.monotonic() - last_change > args.idle_s:
            print(f"  gave up: {state[0]} reports missing, bridge {state[1]} verdicts behind", flush=True)
            break
        await asyncio.sleep(1.0)
    await asyncio.sleep(3.0)  # a duplicate report would arrive now
    return time.monotonic() - started


def downstream(
    run: Run,
    verdicts: TopicReader,
    defects: TopicReader,
    reports: TopicReader,
    alerts: TopicReader,
    final: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The explainer's and the PLC's accounts (``benchmarks.chaos_checks``)."""
    by_frame = {v.frame_id: (v.station_id, str(v.decision)) for v in verdicts.received.values}
    return {
        **chaos_checks.downstream_account(
            {f: d for f, (_, d) in by_frame.items()},
            (e.verdict.frame_id for e in defects.received.values),
            (r.frame_id for r in reports.received.values),
            (a.alert_id for a in alerts.received.values),
        ),
        "report_sources": dict(Counter(r.source for r in reports.received.values)),
        **chaos_checks.plc_account(
            by_frame, run.plc_samples, {s: int(v["pass_count"]) for s, v in final.items()}
        ),
        "plc_final": final,
    }


async def one_run(
    args: argparse.Namespace,
    cluster: KafkaCluster,
    base: Settings,
    model_dir: Path,
    work: Path,
    *,
    name: str,
    count: int,
    hostile: float,
    faults: bool,
) -> dict[str, Any]:
    prefix = f"chaos-{name}-{uuid.uuid4().hex[:6]}"
    settings = scorer_section(base, prefix, args)
    await ensure_topics(settings, frames_partitions=args.partitions)
    run = Run()
    records = Records(name, hostile, args.seed, args.max_big)
    scorers = Scorers(settings, model_dir, work, args.scorers, run)
    stop = asyncio.Event()
    started = time.time()
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(scorers.kill_remaining)  # after an error: no process left behind
        verdicts = await stack.enter_async_context(TopicReader(settings, "verdicts", Verdict))
        dlq = await stack.enter_async_context(TopicReader(settings, "dlq", DeadLetter))
        if faults:  # the whole line: the explainer's and the PLC's outputs are checked too
            defects = await stack.enter_async_context(TopicReader(settings, "defects", DefectEvent))
            reports = await stack.enter_async_context(TopicReader(settings, "reports", Report))
            alerts = await stack.enter_async_context(TopicReader(settings, "alerts", AlertEvent))
            plc = PlcOnThread(free_port())
            plc.start()
            stack.callback(plc.stop)
            sidecars = Sidecars(settings, plc.port, work, run, args.plc_verdict_deadline_ms)
            stack.callback(sidecars.kill_remaining)  # after an error: no process left behind
            await sidecars.start_all()
            sampler = asyncio.create_task(sample_plc(plc, run, args.plc_sample_s, stop))
            sidecar_supervisor = asyncio.create_task(sidecars.supervise(stop))
            await scorers.start_all()
            supervisor = asyncio.create_task(scorers.supervise(stop))
            sender = asyncio.create_task(
                send_records(settings, records, count, args.rate, args.partitions, run)
            )
            await asyncio.gather(
                sender, chaos(args, cluster, settings, scorers, run), kill_sidecars(args, sidecars, run)
            )
        else:  # a backlog first, then drained: throughput
            await send_records(settings, records, count, None, args.partitions, run)
            await scorers.start_all()
            supervisor = asyncio.create_task(scorers.supervise(stop))
        print(f"  {name}: {len(run.sent)} records sent; waiting for every output", flush=True)
        waited = await wait_accounted(run, verdicts, dlq, args.idle_s, args.drain_limit_s)
        extra: dict[str, Any] = {}
        if faults:
            print(f"  {name}: waiting for the explainer's reports and the bridge's commits", flush=True)
            extra["downstream_wait_s"] = round(
                await wait_downstream(settings, run, verdicts, reports, args), 1
            )
            final = {s: await asyncio.to_thread(plc.station, i) for i, s in enumerate(STATIONS)}
            extra.update(downstream(run, verdicts, defects, reports, alerts, final))
            extra["sidecar_processes_started"] = sidecars.starts
            extra["sidecar_exits_unasked"] = len(run.sidecar_exits)
            extra["sidecar_exit_details"] = run.sidecar_exits[:5]
        stop.set()
        await supervisor
        await scorers.stop_all()
        if faults:
            await asyncio.gather(sidecar_supervisor, sampler)
            await sidecars.stop_all()
        result = {
            "name": name,
            "sent_kinds": dict(sorted(Counter(s.kind for s in run.sent).items())),
            "send_failures": run.send_failures,
            "enqueue_retries": run.enqueue_retries,
            "scorer_processes_started": scorers.starts,
            "scorer_exits_unasked": len(run.scorer_exits),
            "scorer_exit_details": run.scorer_exits[:5],
            **account(run, verdicts, dlq),
            **await nothing_stalled(settings, args.partitions),
            "latency_ms": latencies_ms(run, verdicts),
            "good_frames_per_s": round(good_throughput(run, verdicts), 1),
            "drain_wait_s": round(waited, 1),
            "wall_s": round(time.time() - started, 1),
            **extra,
            "faults": recovery(run, verdicts, reports if faults else None),
        }
    return result


def failures(result: dict[str, Any]) -> list[str]:
    problems = []
    for key in (
        "missing",
        "duplicate_verdicts",
        "duplicate_dead_letters",
        "verdict_and_dead_letter",
        "unknown_verdicts",
    ):
        if result[key]:
            problems.append(f"{result['name']}: {key}: {result[key][:5]}")
    if result["missing_count"]:
        problems.append(f"{result['name']}: {result['missing_count']} records without an output")
    if result["uncommitted_frames"]:
        problems.append(f"{result['name']}: {result['uncommitted_frames']} frames never committed (stalled)")
    if result["scorer_exits_unasked"]:
        problems.append(f"{result['name']}: {result['scorer_exits_unasked']} scorer exits nobody caused")
    if result.get("sidecar_exits_unasked"):
        problems.append(
            f"{result['name']}: {result['sidecar_exits_unasked']} explainer/bridge exits nobody caused"
        )
    problems += chaos_checks.downstream_problems(result["name"], result)
    return problems


async def main_async(args: argparse.Namespace, cluster: KafkaCluster, work: Path) -> dict[str, Any]:
    base = Settings(kafka_bootstrap=cluster.bootstrap, kafka=cluster.kafka_settings())
    model_dir = work / "model"
    print("fitting the model", flush=True)
    await asyncio.to_thread(
        fit_synthetic_model, model_dir, per_class=10, bank=300, size=SIZE, camera_frames=True
    )
    summary: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_average": os.getloadavg(),
        "args": vars(args),
    }
    run = functools.partial(one_run, args, cluster, base, model_dir, work)
    if args.fuzz_only:
        clean = await run(name="clean", count=args.clean_frames, hostile=0.0, faults=False)
        fuzz = await run(name="fuzz", count=args.frames, hostile=args.hostile, faults=False)
        summary["runs"] = [clean, fuzz]
        summary["fuzz_over_clean_throughput"] = round(
            fuzz["good_frames_per_s"] / clean["good_frames_per_s"], 3
        )
    else:
        summary["runs"] = [await run(name="chaos", count=args.frames, hostile=args.hostile, faults=True)]
    summary["failures"] = [p for r in summary["runs"] for p in failures(r)]
    return summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10_000, help="records sent (default 10,000)")
    parser.add_argument("--hostile", type=float, default=0.05, help="share of hostile records (default 0.05)")
    parser.add_argument("--rate", type=float, default=30.0, help="records/s in chaos mode (default 30)")
    parser.add_argument("--fuzz-only", action="store_true", help="no faults: a clean run, then the fuzz run")
    parser.add_argument("--clean-frames", type=int, default=5_000, help="good frames of the clean run")
    parser.add_argument("--brokers", type=int, help="cluster nodes (default 3; 1 with --fuzz-only)")
    parser.add_argument("--scorers", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4, help="frames partitions (default 4)")
    parser.add_argument("--batch", type=int, default=8, help="the scorers' max batch")
    parser.add_argument(
        "--scorer-kills", type=int, default=3, help="scorer SIGKILLs (one during a rebalance)"
    )
    parser.add_argument(
        "--broker-down-s", type=float, default=10.0, help="how long a killed broker stays down"
    )
    parser.add_argument(
        "--plc-verdict-deadline-ms",
        type=int,
        default=2000,
        help="the bridge's verdict deadline (its default, 2000; 0: only verdicts the scorer marked late "
        "fail safe, so that passes reach the PLC on a machine too loaded to score within 2 s)",
    )
    parser.add_argument(
        "--plc-sample-s", type=float, default=0.5, help="seconds between reads of the simulated PLC"
    )
    parser.add_argument("--max-big", type=int, default=40, help="most records of the megabyte kinds")
    parser.add_argument(
        "--idle-s",
        type=float,
        default=300.0,
        help="give up waiting after this long without output (default 300: longer than the scorer's "
        "progress watchdog, 120 s, and a restart)",
    )
    parser.add_argument("--drain-limit-s", type=float, default=3600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--work-dir", type=Path, help="keep the cluster, model and service logs here")
    args = parser.parse_args()
    if args.brokers is None:
        args.brokers = 1 if args.fuzz_only else 3
    return args


def main() -> int:
    args = parse_args()
    # The benchmark's own readers and sender: a dead broker is the point, not news on stderr.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="lineguard-chaos-") as tmp:
        work = args.work_dir.resolve() if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"starting a {args.brokers}-node cluster", flush=True)
        with throwaway_cluster(work / "cluster", nodes=args.brokers) as cluster:
            summary = asyncio.run(main_async(args, cluster, work))
    print_results(summary, args.json)
    for problem in summary["failures"]:
        print(f"FAILED: {problem}")
    print("OK: every record exactly one verdict or one dead letter" if not summary["failures"] else "")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
