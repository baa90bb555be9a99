"""The scorer's async shell: consume frames, call the core and the model, publish transactionally.

Two stages connected by a queue of scoring tasks, so publishing batch *n* overlaps scoring the
next ones:

* intake: micro-batch from the ``frames`` consumer group (max size, max wait) and start scoring it
  as a task: decode in a thread pool, score in an executor of ``model_workers`` threads (the event
  loop stays free, so heartbeats never starve). Up to ``model_workers`` batches are scored at once;
* publish: takes the tasks in intake order (so verdicts keep the frames' order) and, per input
  partition, commits one transaction holding the partition's verdicts, defect events, dead letters
  *and* its consumed offset (``send_offsets_to_transaction``).

Exactly once: outputs and offsets commit together or not at all. On abort the partition is sought
back to its first uncommitted offset and records fetched before that are dropped (epochs, see
``partitions.py``). SIGTERM stops intake, publishes what is in flight, commits and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from services.scorer import metrics
from services.scorer.alerts import AlertDetector, AlertRules
from services.scorer.core import (
    DecodedFrame,
    RawRecord,
    RecordKey,
    RecordOutcome,
    ScoredBatch,
    build_outcomes,
    decode_record,
    fresh_outcomes,
    merge_batches,
    order_by_record,
    split_for_idle_workers,
)
from services.scorer.models import ModelHolder, ModelWatcher, ServingModel, load_model_dir, warm_up
from services.scorer.partitions import PartitionState, PartitionTransactions
from shared.engine.config import Decision
from shared.messages.codec import encode
from shared.telemetry.logging import log_event
from shared.telemetry.tracing import extract_context, get_tracer, inject_headers, span_link

log = logging.getLogger("lineguard.scorer")
tracer = get_tracer("lineguard.scorer")

_POLL_MS = 200  # how long intake waits for the first record of a batch before checking for stop


class ScorerService:
    def __init__(self, settings: Any, holder: ModelHolder) -> None:
        self.settings = settings
        self.cfg = settings.scorer
        self.holder = holder
        self.frames_topic = settings.topic("frames")
        self.topics = {name: settings.topic(name) for name in ("verdicts", "defects", "dlq", "alerts")}
        # Operator alerts ride in the same transaction as the verdicts that raised them.
        self.alert_detector = AlertDetector(AlertRules.from_settings(settings.alerts))
        self._decode_pool = ThreadPoolExecutor(self.cfg.decode_threads, thread_name_prefix="decode")
        self._model_pool = ThreadPoolExecutor(self.cfg.model_workers, thread_name_prefix="model")
        # Scoring tasks in intake order: one per worker waiting here, plus the one the publisher holds,
        # so a worker that finishes finds the next batch already fetched and decoding.
        self._queue: asyncio.Queue[asyncio.Task[ScoredBatch] | None] = asyncio.Queue(
            maxsize=self.cfg.model_workers
        )
        self.consumer: Any = None
        self.partitions: PartitionTransactions | None = None
        self.committed_batches = 0
        self.committed_records = 0  # frames whose outputs and offset this instance committed
        self._scoring = 0  # batches between intake and the end of their model run

    # -- lifecycle ---------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        from shared.kafka.client import make_consumer

        self.consumer = make_consumer(
            self.settings,
            group_id=self.cfg.group_id,
            session_timeout_ms=self.cfg.session_timeout_ms,
            heartbeat_interval_ms=max(100, self.cfg.session_timeout_ms // 3),
            max_poll_records=self.cfg.max_batch,
        )
        self.partitions = PartitionTransactions(self.settings, self.consumer)
        await self._warm_up_workers()
        await self.consumer.start()
        self.consumer.subscribe([self.frames_topic], listener=self.partitions.listener())
        log_event(
            log,
            "scorer_started",
            topic=self.frames_topic,
            group=self.cfg.group_id,
            model=self.holder.version,
            max_batch=self.cfg.max_batch,
            max_wait_ms=self.cfg.max_wait_ms,
        )
        publisher = asyncio.create_task(self._publish_loop(), name="publish")
        try:
            await self._intake_loop(stop, publisher)
        finally:
            if not publisher.done():
                # Publish what is queued, then stop (unless the publisher dies first).
                await self._enqueue(None, publisher, raise_if_stopped=False)
            try:
                await publisher
            finally:
                while not self._queue.empty():  # left behind by a failed publisher
                    leftover = self._queue.get_nowait()
                    if leftover is not None:
                        leftover.cancel()
                await self.consumer.stop()
                await self.partitions.close()
                self._decode_pool.shutdown(wait=False, cancel_futures=True)
                self._model_pool.shutdown(wait=False, cancel_futures=True)
        log_event(
            log,
            "scorer_stopped",
            committed_batches=self.committed_batches,
            committed_records=self.committed_records,
        )

    async def _warm_up_workers(self) -> None:
        """A warm-up batch on every model worker thread before taking partitions (see ``warm_up``)."""
        serving = self.holder.current()
        workers = self.cfg.model_workers
        barrier = threading.Barrier(workers)  # so that each worker thread takes exactly one

        def warm() -> None:
            barrier.wait(timeout=120)
            warm_up(serving.model)

        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        await asyncio.gather(*(loop.run_in_executor(self._model_pool, warm) for _ in range(workers)))
        log_event(log, "model_workers_warm", workers=workers, seconds=round(time.perf_counter() - started, 2))

    # -- intake: consume, decode, score ------------------------------------------------------------
    async def _intake_loop(self, stop: asyncio.Event, publisher: asyncio.Task[None]) -> None:
        assert self.partitions is not None
        while not stop.is_set():
            if publisher.done():  # a publish failure we cannot handle ends the service
                publisher.result()
                return
            records, epochs = await self._next_batch(stop)
            if not records:
                continue
            # During a rebalance wait for the new assignment; records fetched before it carry an old
            # epoch and are dropped when published (the assignment's seek brings them back).
            await self.partitions.wait_unpaused()
            for part in split_for_idle_workers(records, self.cfg.model_workers - self._scoring):
                self.partitions.batch_started()
                self._scoring += 1
                scoring = asyncio.create_task(self._score(part, epochs), name="score")
                try:
                    await self._enqueue(scoring, publisher)
                except BaseException:
                    scoring.cancel()
                    await self.partitions.batch_finished()
                    raise

    async def _enqueue(
        self,
        item: asyncio.Task[ScoredBatch] | None,
        publisher: asyncio.Task[None],
        *,
        raise_if_stopped: bool = True,
    ) -> None:
        """Queue an item for the publisher without hanging on a full queue if the publisher dies."""
        putting = asyncio.ensure_future(self._queue.put(item))
        await asyncio.wait({putting, publisher}, return_when=asyncio.FIRST_COMPLETED)
        if not putting.done():
            putting.cancel()
            if raise_if_stopped:
                publisher.result()  # raises what ended the publisher
                raise RuntimeError("publisher stopped")

    async def _next_batch(self, stop: asyncio.Event) -> tuple[list[RawRecord], dict[RecordKey, int]]:
        """Up to ``max_batch`` records: waits for the first, then at most ``max_wait_ms`` for more.

        Each record is tagged with its partition's epoch right when ``getmany`` returns it.
        """
        assert self.partitions is not None
        consumer, partitions = self.consumer, self.partitions
        epochs: dict[RecordKey, int] = {}

        def tagged(batch: dict[Any, list[Any]]) -> list[Any]:
            got = [r for rs in batch.values() for r in rs]
            for r in got:
                epochs[(r.topic, r.partition, r.offset)] = partitions.epoch_of(r.topic, r.partition)
            return got

        records = tagged(await consumer.getmany(timeout_ms=_POLL_MS, max_records=self.cfg.max_batch))
        if not records:
            return [], epochs
        deadline = time.monotonic() + self.cfg.max_wait_ms / 1000
        while len(records) < self.cfg.max_batch and not stop.is_set():
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            more = await consumer.getmany(
                timeout_ms=remaining_ms, max_records=self.cfg.max_batch - len(records)
            )
            got = tagged(more)
            if not got:
                break
            records.extend(got)
        self._record_lag(records)
        raw = [
            RawRecord(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ())) for r in records
        ]
        return raw, epochs

    def _record_lag(self, records: list[Any]) -> None:
        last: dict[Any, int] = {}
        for r in records:
            last[(r.topic, r.partition)] = max(last.get((r.topic, r.partition), -1), r.offset)
        from aiokafka import TopicPartition

        for (topic, partition), offset in last.items():
            highwater = self.consumer.highwater(TopicPartition(topic, partition))
            if highwater is not None:
                metrics.CONSUMER_LAG.labels(str(partition)).set(max(0, highwater - offset - 1))

    async def _score(self, records: list[RawRecord], epochs: dict[RecordKey, int]) -> ScoredBatch:
        try:
            return await self._decode_and_score(records, epochs)
        finally:
            self._scoring -= 1

    async def _decode_and_score(self, records: list[RawRecord], epochs: dict[RecordKey, int]) -> ScoredBatch:
        loop = asyncio.get_running_loop()
        metrics.FRAMES_CONSUMED.inc(len(records))
        metrics.BATCH_SIZE.observe(len(records))
        links = [link for link in (span_link(r.headers) for r in records) if link is not None]
        serving = self.holder.current()  # the only place a new model is swapped in: between batches
        with tracer.start_as_current_span("score_batch", links=links) as span:
            span.set_attribute("lineguard.batch_size", len(records))
            span.set_attribute("lineguard.model_version", serving.version)
            started = time.perf_counter()
            decoded_or_bad = await asyncio.gather(
                *(loop.run_in_executor(self._decode_pool, self._decode, r) for r in records)
            )
            metrics.STAGE_SECONDS.labels("decode").observe(time.perf_counter() - started)
            bad = [d for d in decoded_or_bad if isinstance(d, RecordOutcome)]
            good = [d for d in decoded_or_bad if isinstance(d, DecodedFrame)]
            outcomes: list[RecordOutcome] = list(bad)
            if good:
                outcomes.extend(await self._run_model(serving, good))
        ordered = order_by_record(outcomes)
        fetched_in = [epochs[(o.record.topic, o.record.partition, o.record.offset)] for o in ordered]
        return ScoredBatch(ordered, fetched_in, links)

    def _decode(self, record: RawRecord) -> DecodedFrame | RecordOutcome:
        return decode_record(
            record, max_image_bytes=self.cfg.max_image_bytes, max_pixels=self.cfg.max_image_pixels
        )

    async def _run_model(self, serving: ServingModel, good: list[DecodedFrame]) -> list[RecordOutcome]:
        loop = asyncio.get_running_loop()
        timings: dict[str, float] = {}
        hints = [d.frame.product for d in good]
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(
                self._model_pool, lambda: serving.model.score_batch([d.pixels for d in good], hints, timings)
            )
            error = ""
        except Exception as exc:  # a model bug must not stop the line: the PLC gets "error" verdicts
            log_event(
                log, "model_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}", frames=len(good)
            )
            results, error = None, f"model failed: {type(exc).__name__}"
        metrics.STAGE_SECONDS.labels("model").observe(time.perf_counter() - started)
        if "knn" in timings:
            metrics.STAGE_SECONDS.labels("knn").observe(timings["knn"])
        return await loop.run_in_executor(
            self._decode_pool,
            lambda: build_outcomes(
                good, results, model_version=serving.version, late_policy=self.cfg.late_policy, error=error
            ),
        )

    # -- publish: one transaction per input partition ----------------------------------------------
    async def _publish_loop(self) -> None:
        assert self.partitions is not None
        held: list[asyncio.Task[ScoredBatch] | None] = []  # taken from the queue, not yet due
        while True:
            scoring = held.pop() if held else await self._queue.get()
            if scoring is None:
                return
            taken = 1
            try:
                batches = [await scoring]
                # Batches already scored behind it share its transactions: a publisher that fell
                # behind (a slow commit, a retried send) catches up instead of queueing commits.
                while not self._queue.empty():
                    following = self._queue.get_nowait()
                    if following is None or not following.done():
                        held.append(following)
                        break
                    taken += 1
                    batches.append(following.result())
                started = time.perf_counter()
                await self._publish(merge_batches(batches))
                metrics.STAGE_SECONDS.labels("publish").observe(time.perf_counter() - started)
            finally:
                for _ in range(taken):
                    await self.partitions.batch_finished()

    async def _publish(self, batch: ScoredBatch) -> None:
        by_partition: dict[tuple[str, int], list[tuple[RecordOutcome, int]]] = defaultdict(list)
        for outcome, epoch in zip(batch.outcomes, batch.epochs, strict=True):
            by_partition[(outcome.record.topic, outcome.record.partition)].append((outcome, epoch))
        await asyncio.gather(
            *(self._publish_partition(key, tagged, batch) for key, tagged in by_partition.items())
        )

    async def _publish_partition(
        self, key: tuple[str, int], tagged: list[tuple[RecordOutcome, int]], batch: ScoredBatch
    ) -> None:
        from aiokafka import TopicPartition
        from aiokafka.errors import KafkaError, ProducerFenced

        assert self.partitions is not None
        state = self.partitions.state(*key)
        if state is None:
            metrics.TRANSACTIONS.labels("stale").inc()
            return  # no longer ours
        # Fetched before the partition's last seek (rebalance, abort), or already committed: dropped,
        # because that seek fetches them again.
        outcomes = fresh_outcomes(tagged, state.epoch, state.next_offset)
        if len(outcomes) < len(tagged):
            metrics.TRANSACTIONS.labels("stale").inc()
        if not outcomes:
            return
        producer = state.producer
        first, last = outcomes[0].record.offset, outcomes[-1].record.offset
        try:
            with tracer.start_as_current_span("publish", links=batch.links) as span:
                span.set_attribute("lineguard.partition", key[1])
                await producer.begin_transaction()
                for outcome in outcomes:
                    await self._send(producer, outcome)
                await producer.send_offsets_to_transaction(
                    {TopicPartition(*key): last + 1}, self.cfg.group_id
                )
                await producer.commit_transaction()
        except ProducerFenced:
            metrics.TRANSACTIONS.labels("fenced").inc()
            await self.partitions.drop(state, "producer fenced: the partition has a new owner")
            return
        except KafkaError as exc:
            metrics.TRANSACTIONS.labels("aborted").inc()
            log_event(
                log,
                "transaction_aborted",
                logging.WARNING,
                partition=key[1],
                first_offset=first,
                error=f"{type(exc).__name__}: {exc}",
            )
            await self._abort(state)
            return
        state.next_offset = last + 1
        self.committed_batches += 1
        self.committed_records += len(outcomes)
        metrics.TRANSACTIONS.labels("committed").inc()
        self._count_committed(outcomes)

    async def _abort(self, state: PartitionState) -> None:
        assert self.partitions is not None
        try:
            await state.producer.abort_transaction()
        except Exception as exc:
            # The producer is unusable; a fresh one with the same id takes over the partition.
            log_event(log, "abort_failed", logging.ERROR, partition=state.partition, error=type(exc).__name__)
            await self.partitions.drop(state, "transaction could not be aborted")
            return
        self.partitions.reset(state, state.next_offset)  # re-read everything not committed

    async def _send(self, producer: Any, outcome: RecordOutcome) -> None:
        record = outcome.record
        context = extract_context(record.headers)
        if outcome.dead_letter is not None:
            headers = inject_headers([], context=context)
            await producer.send(
                self.topics["dlq"], encode(outcome.dead_letter), key=record.key, headers=headers
            )
            return
        verdict = outcome.verdict
        assert verdict is not None
        with tracer.start_as_current_span("verdict", context=context) as span:
            span.set_attribute("lineguard.frame_id", verdict.frame_id)
            span.set_attribute("lineguard.decision", verdict.decision)
            headers = inject_headers([])
        await producer.send(
            self.topics["verdicts"], encode(verdict), key=verdict.station_id.encode(), headers=headers
        )
        if outcome.defect is not None:
            await producer.send(
                self.topics["defects"],
                encode(outcome.defect),
                key=verdict.station_id.encode(),
                headers=headers,
            )
        for alert in self.alert_detector.observe(verdict):
            await producer.send(
                self.topics["alerts"], encode(alert), key=alert.station_id.encode(), headers=headers
            )
            metrics.ALERTS.labels(alert.kind).inc()
            log_event(log, "alert_raised", kind=alert.kind, station=alert.station_id, summary=alert.summary)

    @staticmethod
    def _count_committed(outcomes: list[RecordOutcome]) -> None:
        for outcome in outcomes:
            if outcome.dead_letter is not None:
                metrics.DEAD_LETTERS.labels(outcome.dead_letter.reason).inc()
                continue
            verdict = outcome.verdict
            assert verdict is not None
            metrics.VERDICTS.labels(verdict.product_class, verdict.decision, verdict.station_id).inc()
            if verdict.decision != Decision.ERROR:  # an error verdict carries no score
                metrics.SCORES.labels(verdict.product_class).observe(verdict.score)
                metrics.ROUTE_CONFIDENCE.labels(verdict.product_class).observe(verdict.route_confidence)
            metrics.END_TO_END_SECONDS.observe(verdict.latency_ms / 1000)
            if verdict.late:
                metrics.LATE_VERDICTS.inc()
            if outcome.defect is not None:
                metrics.DEFECT_EVENTS.inc()


def _report_watcher_end(task: asyncio.Task[None]) -> None:
    """The watcher only ends on shutdown; anything else means hot swap is off, which must be loud."""
    if not task.cancelled() and task.exception() is not None:
        error = task.exception()
        log_event(log, "model_watcher_failed", logging.ERROR, error=f"{type(error).__name__}: {error}")


async def serve(settings: Any, model_dir: Path | None, stop: asyncio.Event) -> int:
    """Load the model (or wait for one on the models topic), then score until ``stop``."""
    holder = ModelHolder()
    if model_dir is not None:
        serving = await asyncio.to_thread(
            load_model_dir,
            model_dir,
            weights_dir=settings.scorer.weights_dir,
            review_until_confirmed=settings.scorer.review_until_confirmed,
        )
        holder = ModelHolder(serving)
        log_event(log, "model_loaded", version=serving.version, path=str(model_dir))
    watcher_task: asyncio.Task[None] | None = None
    if settings.scorer.watch_models:
        watcher = ModelWatcher(settings, holder, from_latest=model_dir is None)
        watcher_task = asyncio.create_task(watcher.run(), name="model-watcher")
        watcher_task.add_done_callback(_report_watcher_end)
    try:
        if holder.version is None:
            log_event(log, "waiting_for_model", topic=settings.topic("models"))
            waiter = asyncio.create_task(holder.wait_available())
            stopper = asyncio.create_task(stop.wait())
            pending = {waiter, stopper} | ({watcher_task} if watcher_task else set())
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if watcher_task in done:
                watcher_task.result()  # raises why it stopped
            if stop.is_set():
                return 0
        await ScorerService(settings, holder).run(stop)
    finally:
        if watcher_task is not None:
            watcher_task.cancel()
            await asyncio.gather(watcher_task, return_exceptions=True)
    return 0
