"""``lineguard shadow``'s async shell: a candidate model scores frames beside the serving one.

1. Frames are read from ``frames`` with the shadow's own consumer group (``LINEGUARD_SHADOW__GROUP_ID``,
   refused if it is the scorer's): every partition assigned, from an offset, a time, or the live end;
   a replay stops at the end offsets the topic had when the run started (or at ``until``), a live run
   after a duration, a number of frames, or a signal. The group's offsets are committed after each
   batch's verdicts are written, so the group's lag shows how far behind a live shadow is; the
   serving scorer's group is never touched.
2. Each batch is decoded, scored and turned into verdicts by the scorer's own code
   (``services.scorer.core.decode_record`` and ``verdict_for``; the late policy ``score``, so that a
   replayed frame gets its model's decision, marked late) in a worker thread, and the verdicts go to
   ``shadow-verdicts`` (key: station id; header ``lineguard-shadow-run``). Nothing is written to the
   topics the line acts on.
3. The serving verdicts of the same frames are read from ``verdicts`` (read_committed), from a little
   before the first frame's time, until every frame is joined or ``join_wait_s`` has passed since the
   end of the topic was reached; then the operators' latest judgements from ``feedback``.
4. ``core.Comparison`` builds the report, written as JSON and HTML.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from services.labels.feedback_topic import read_latest_feedback
from services.scorer.core import DecodedFrame, RawRecord, decode_record, error_verdict, verdict_for
from services.shadow import metrics
from services.shadow.core import Candidate, Comparison, iso_time
from shared.errors import BrokerError, ConfigError, MessageError
from shared.frames_store import ClaimStore, frame_file_stem
from shared.kafka.client import make_consumer, make_producer, partition_counts
from shared.messages.codec import decode, encode
from shared.messages.schemas import Feedback, Verdict
from shared.settings import LatePolicy, Settings
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.shadow")
RUN_HEADER = "lineguard-shadow-run"
_PROGRESS_EVERY = 500  # frames between progress lines


def check_shadow_settings(settings: Settings) -> None:
    """A shadow run commits offsets for its own group only: never the serving scorer's."""
    if settings.shadow.group_id == settings.scorer.group_id:
        raise ConfigError(
            "LINEGUARD_SHADOW__GROUP_ID is the scorer's group: a shadow run must never commit offsets "
            "for the serving scorer"
        )


@dataclass(frozen=True)
class Window:
    """Which frames a run scores. Exactly one start: ``from_offset`` (every partition), ``from_time_ns``
    (the first record at or after it), or ``live`` (from the end)."""

    from_offset: int | None = None
    from_time_ns: int | None = None
    live: bool = False
    until_ns: int | None = None  # replay: frames recorded up to this time; live: stop at this time
    duration_s: float | None = None  # live: stop after this long
    max_frames: int = 100_000

    def __post_init__(self) -> None:
        starts = (self.from_offset is not None) + (self.from_time_ns is not None) + self.live
        if starts != 1:
            raise ConfigError("give exactly one of --from-offset, --from-time and --live")
        if self.from_offset is not None and self.from_offset < 0:
            raise ConfigError("--from-offset must not be negative")
        if self.duration_s is not None and not self.live:
            raise ConfigError("--duration is for --live runs (a replay stops at the end or --until)")
        if self.max_frames < 1:
            raise ConfigError("--max-frames must be at least 1")

    def describe(self) -> dict[str, Any]:
        if self.live:
            start = "live (the end of frames when the run started)"
        elif self.from_offset is not None:
            start = f"offset {self.from_offset} of every partition"
        else:
            assert self.from_time_ns is not None
            start = iso_time(self.from_time_ns)
        until = iso_time(self.until_ns) if self.until_ns is not None else ""
        if not until and not self.live:
            until = "the end of frames when the run started"
        return {"mode": "live" if self.live else "replay", "start": start, "until": until}


@dataclass
class _Progress:
    scored: int = 0
    first_timestamp_ms: int | None = None
    first_captured_at: int | None = None
    last_captured_at: int | None = None
    offsets: dict[int, list[int]] = field(default_factory=dict)  # partition -> [first, last]

    def saw(self, record: Any, verdict: Verdict | None) -> None:
        first_last = self.offsets.setdefault(record.partition, [record.offset, record.offset])
        first_last[1] = record.offset
        if self.first_timestamp_ms is None or record.timestamp < self.first_timestamp_ms:
            self.first_timestamp_ms = record.timestamp
        if verdict is not None:
            captured = verdict.captured_at
            if self.first_captured_at is None or captured < self.first_captured_at:
                self.first_captured_at = captured
            if self.last_captured_at is None or captured > self.last_captured_at:
                self.last_captured_at = captured


class ShadowRun:
    def __init__(
        self,
        settings: Settings,
        model: Any,  # shared.engine.model.InspectionModel
        candidate: Candidate,
        window: Window,
        *,
        trained: Collection[str] = (),
        run_id: str | None = None,
    ) -> None:
        check_shadow_settings(settings)
        self.settings = settings
        self.cfg = settings.shadow
        self.model = model
        self.candidate = candidate
        self.window = window
        self.claims = ClaimStore.from_settings(settings)  # claim-checked frames, as the scorer reads them
        # File stems (``frame_file_stem``) of the frames the candidate was trained on: their labels are
        # left out of the escape and false-reject counts.
        self.trained = set(trained)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.comparison = Comparison(changed_listed=self.cfg.changed_frames_listed)
        self.progress = _Progress()
        self.positioned = asyncio.Event()  # set once every frames partition is at the window's start

    def _log(self, event: str, level: int = logging.INFO, **fields: Any) -> None:
        """A log line of this run: each carries the run id, so one run's lines can be picked out."""
        log_event(log, event, level, run=self.run_id, **fields)

    async def run(self, stop: asyncio.Event) -> dict[str, Any]:
        self._log(
            "shadow_started",
            candidate=self.candidate.model_version,
            group=self.cfg.group_id,
            **self.window.describe(),
        )
        await self._score_frames(stop)
        self._log("shadow_scored", frames=self.progress.scored)
        if self.progress.first_timestamp_ms is not None:
            # Also after a stop: the frames scored so far still get their serving verdicts (bounded).
            await self._join_serving(self.progress.first_timestamp_ms - int(self.cfg.join_slack_s * 1000))
        feedback = await self._feedback()
        window = {
            **self.window.describe(),
            "first_captured_at": iso_time(self.progress.first_captured_at)
            if self.progress.first_captured_at
            else "",
            "last_captured_at": iso_time(self.progress.last_captured_at)
            if self.progress.last_captured_at
            else "",
            "partitions": {
                str(p): {"first_offset": fl[0], "last_offset": fl[1]}
                for p, fl in sorted(self.progress.offsets.items())
            },
        }
        report = self.comparison.report(
            feedback,
            candidate=self.candidate,
            window=window,
            run_id=self.run_id,
            generated_at_ns=time.time_ns(),
            excluded=[f for f in self.comparison.candidate if frame_file_stem(f) in self.trained],
            live=self.window.live,
        )
        self._log(
            "shadow_report",
            compared=report["frames"]["compared"],
            agreement=report["agreement"],
            serving_escape_rate=report["outcomes"]["serving"]["escape_rate"],
            candidate_escape_rate=report["outcomes"]["candidate"]["escape_rate"],
        )
        return report

    # -- 1 and 2: score the window's frames --------------------------------------------------------

    async def _score_frames(self, stop: asyncio.Event) -> None:
        from aiokafka import TopicPartition

        topic = self.settings.topic("frames")
        count = (await partition_counts(self.settings, [topic])).get(topic)
        if not count:
            raise BrokerError(f"no topic {topic}: run `lineguard topics ensure`")
        tps = [TopicPartition(topic, p) for p in range(count)]
        consumer = make_consumer(
            self.settings, group_id=self.cfg.group_id, max_poll_records=self.cfg.max_batch
        )
        producer = make_producer(self.settings)
        await consumer.start()
        await producer.start()
        try:
            consumer.assign(tps)
            ends = await self._seek_start(consumer, tps)
            for tp in tps:  # resolve the seeks now, so that "live" means from this moment
                await consumer.position(tp)
            self.positioned.set()
            active = set(tps)
            started = time.monotonic()
            while active and not stop.is_set() and self.progress.scored < self.window.max_frames:
                if self._live_is_over(started):
                    break
                batch = await consumer.getmany(*active, timeout_ms=200, max_records=self.cfg.max_batch)
                records = []
                for tp, got in batch.items():
                    for record in got:
                        if self._beyond(record, ends.get(tp)):
                            active.discard(tp)
                            break
                        records.append(record)
                records = records[: self.window.max_frames - self.progress.scored]
                if records:
                    await self._score_and_send(records, producer)
                    await consumer.commit(_next_offsets(records))
                for tp in list(active):
                    if tp in ends and await consumer.position(tp) >= ends[tp]:
                        active.discard(tp)
        finally:
            await consumer.stop()
            await producer.stop()

    async def _seek_start(self, consumer: Any, tps: list[Any]) -> dict[Any, int]:
        """Seek every partition to the window's start; returns the end offsets a replay stops at
        (none for a live run)."""
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        window = self.window
        if window.live:
            for tp in tps:
                consumer.seek(tp, ends[tp])
            return {}
        if window.from_offset is not None:
            for tp in tps:
                consumer.seek(tp, min(max(window.from_offset, begins[tp]), ends[tp]))
        else:
            assert window.from_time_ns is not None
            found = await consumer.offsets_for_times({tp: window.from_time_ns // 1_000_000 for tp in tps})
            for tp in tps:
                consumer.seek(tp, found[tp].offset if found.get(tp) is not None else ends[tp])
        return dict(ends)

    def _beyond(self, record: Any, end: int | None) -> bool:
        """Past the window: at the end offset a replay stops at, or recorded after ``until``."""
        if end is not None and record.offset >= end:
            return True
        until = self.window.until_ns
        return until is not None and not self.window.live and record.timestamp * 1_000_000 > until

    def _live_is_over(self, started: float) -> bool:
        window = self.window
        if not window.live:
            return False
        if window.duration_s is not None and time.monotonic() - started >= window.duration_s:
            return True
        return window.until_ns is not None and time.time_ns() >= window.until_ns

    async def _score_and_send(self, records: list[Any], producer: Any) -> None:
        raw = [
            RawRecord(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ())) for r in records
        ]
        by_offset, elapsed_ms = await asyncio.to_thread(self._score, raw)
        sends = []
        topic = self.settings.topic("shadow-verdicts")
        scored = [verdict for verdict in by_offset.values() if verdict is not None]
        per_frame_ms = elapsed_ms / max(1, len(scored))
        for record in records:
            verdict = by_offset.get((record.partition, record.offset))
            self.progress.saw(record, verdict)
            if verdict is None:
                self.comparison.bad_frames += 1
                metrics.FRAMES.labels("bad").inc()
                continue
            metrics.FRAMES.labels("scored").inc()
            if not self.comparison.add_candidate(verdict, per_frame_ms):
                continue
            sends.append(
                await producer.send(
                    topic,
                    encode(verdict),
                    key=verdict.station_id.encode(),
                    headers=[(RUN_HEADER, self.run_id.encode())],
                )
            )
        await asyncio.gather(*sends)  # acknowledged before the offsets are committed
        metrics.SHADOW_VERDICTS.inc(len(sends))
        before = self.progress.scored
        self.progress.scored += len(scored)
        if self.progress.scored // _PROGRESS_EVERY > before // _PROGRESS_EVERY:
            self._log("shadow_progress", frames=self.progress.scored)

    def _score(self, records: list[RawRecord]) -> tuple[dict[tuple[int, int], Verdict | None], float]:
        """Decode, score and build verdicts exactly as the scorer does (blocking: a worker thread);
        by (partition, offset). A frame that does not decode gets no verdict (the scorer dead-lettered
        it)."""
        started = time.perf_counter()
        decoded = [
            decode_record(  # as the scorer decodes: large frames reduced to the model's input size
                record,
                max_image_bytes=self.settings.scorer.max_image_bytes,
                max_pixels=self.settings.scorer.max_image_pixels,
                reduce_to=self.model.input_size,
                store=self.claims,
            )
            for record in records
        ]
        good = [item for item in decoded if isinstance(item, DecodedFrame)]
        version = self.candidate.model_version
        verdicts: dict[tuple[int, int], Verdict] = {}
        if good:
            try:
                results = self.model.score_batch(
                    [d.pixels for d in good],
                    [d.frame.product for d in good],
                    frame_sizes=[d.frame_size for d in good],
                )
            except Exception as exc:  # as the scorer: the frames get error verdicts, the run goes on
                self._log("model_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
                now = time.time_ns()
                reason = f"model failed: {type(exc).__name__}"
                for item in good:
                    verdicts[_at(item.record)] = error_verdict(
                        item.frame, model_version=version, now_ns=now, reason=reason
                    )
            else:
                now = time.time_ns()
                for item, result in zip(good, results, strict=True):
                    verdicts[_at(item.record)] = verdict_for(
                        item.frame,
                        result,
                        model_version=version,
                        now_ns=now,
                        late_policy=LatePolicy.SCORE,
                        non_finite_policy=self.settings.scorer.non_finite_decision,
                    )
        elapsed_ms = (time.perf_counter() - started) * 1000
        return {_at(record): verdicts.get(_at(record)) for record in records}, elapsed_ms

    # -- 3: the serving verdicts and the labels -----------------------------------------------------

    async def _join_serving(self, since_ms: int) -> None:
        from aiokafka import TopicPartition

        topic = self.settings.topic("verdicts")
        count = (await partition_counts(self.settings, [topic])).get(topic)
        if not count:
            raise BrokerError(f"no topic {topic}: run `lineguard topics ensure`")
        tps = [TopicPartition(topic, p) for p in range(count)]
        consumer = make_consumer(self.settings, group_id=None)
        await consumer.start()
        try:
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            found = await consumer.offsets_for_times({tp: max(0, since_ms) for tp in tps})
            for tp in tps:
                consumer.seek(tp, found[tp].offset if found.get(tp) is not None else ends[tp])
            deadline = time.monotonic() + self.cfg.read_timeout_s
            waiting_since: float | None = None
            bad = 0
            while self.comparison.missing_serving:
                batch = await consumer.getmany(timeout_ms=500, max_records=500)
                for records in batch.values():
                    for record in records:
                        try:
                            verdict = decode(record.value or b"", Verdict)
                        except MessageError:
                            bad += 1
                            continue
                        self.comparison.add_serving(verdict)
                now = time.monotonic()
                if waiting_since is None:
                    positions = [await consumer.position(tp) for tp in tps]
                    if all(position >= ends[tp] for tp, position in zip(tps, positions, strict=True)):
                        waiting_since = now  # the end as of the run: wait a little for verdicts to come
                if (
                    waiting_since is not None and now - waiting_since >= self.cfg.join_wait_s
                ) or now > deadline:
                    break
            if self.comparison.missing_serving:
                self._log(
                    "serving_verdicts_missing",
                    logging.WARNING,
                    missing=self.comparison.missing_serving,
                    detail="no serving verdict found for these frames (the scorer is behind, or its "
                    "verdicts expired)",
                )
            if bad:
                self._log("verdict_records_skipped", logging.WARNING, records=bad)
        finally:
            await consumer.stop()

    async def _feedback(self) -> dict[str, Feedback]:
        def skipped(offset: int, exc: MessageError) -> None:
            self._log("feedback_record_skipped", logging.WARNING, offset=offset, reason=exc.reason)

        return await read_latest_feedback(self.settings, self.cfg.read_timeout_s, skipped)


def _at(record: RawRecord) -> tuple[int, int]:
    return record.partition, record.offset


def _next_offsets(records: list[Any]) -> dict[Any, int]:
    from aiokafka import TopicPartition

    offsets: dict[Any, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets
