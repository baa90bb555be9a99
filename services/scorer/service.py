"""The scorer's async shell: consume frames, call the core and the model, publish transactionally.

Two stages connected by a queue of scoring tasks, so publishing batch *n* overlaps scoring the
next ones:

* intake: micro-batch from the ``frames`` consumer group (max size, max wait) and start scoring it
  as a task: decode in a thread pool, score in an executor of ``model_workers`` threads (the event
  loop stays free, so heartbeats never starve), then build and encode every output (``outputs``).
  Up to ``model_workers`` batches are scored at once;
* publish: takes the tasks in intake order (so verdicts keep the frames' order) and, per input
  partition, commits one transaction holding the partition's verdicts, defect events, dead letters
  *and* its consumed offset (``publish.py``).

Exactly once: outputs and offsets commit together or not at all. A failed transaction is retried or
its partition recovered and sought back to its committed offset; records fetched before that are
dropped (epochs, see ``partitions.py``). SIGTERM stops intake, publishes what is in flight, commits
and exits 0. A fault the scorer cannot get past without losing or stalling frames (a partition that
cannot be recovered, a rebalance-listener error, the watchdog seeing no progress, every model or
decode thread hung) ends it with ``ScorerFailure``: it leaves the group and exits non-zero.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry import trace

from services.scorer import metrics
from services.scorer.alerts import AlertDetector, AlertRules
from services.scorer.core import (
    DecodedFrame,
    RawRecord,
    RecordKey,
    RecordOutcome,
    ScoredBatch,
    ScorerFailure,
    build_outcomes,
    decode_record,
    describe,
    failed,
    fresh_outcomes,
    in_turn,
    merge_batches,
    order_by_record,
    split_for_idle_workers,
)
from services.scorer.labels import LabelValues
from services.scorer.models import ModelHolder, ModelWatcher, ServingModel, load_model_dir, warm_up
from services.scorer.outputs import prepare
from services.scorer.partitions import PartitionTransactions
from services.scorer.publish import PartitionPublisher
from services.scorer.watchdog import Health, ProgressWatchdog
from shared.engine.config import Decision
from shared.engine.scorers.index import faiss_blas_kernel
from shared.frames_store import ClaimStore
from shared.messages.schemas import AlertEvent
from shared.telemetry.logging import log_event
from shared.telemetry.tracing import get_tracer, set_messaging_attributes, span_link

log = logging.getLogger("lineguard.scorer")
tracer = get_tracer("lineguard.scorer")
T = TypeVar("T")

_POLL_MS = 200  # how long intake waits for the first record of a batch before checking for stop
_STOP_TIMEOUT_S = 15.0  # leaving the group when failing


class ScorerService:
    def __init__(
        self,
        settings: Any,
        holder: ModelHolder,
        health: Health | None = None,
        *,
        make_producer: Callable[..., Any] | None = None,
    ) -> None:
        """``make_producer``: how partition producers are made (default ``shared.kafka.client``'s)."""
        self.settings = settings
        self._make_producer = make_producer
        self.cfg = settings.scorer
        self.holder = holder
        self.health = health or Health()
        self.frames_topic = settings.topic("frames")
        self.claims = ClaimStore.from_settings(settings)  # claim-checked frames are fetched from it
        # Operator alerts ride in the same transaction as the verdicts that raised them.
        self.alert_detector = AlertDetector(
            AlertRules.from_settings(settings.alerts),
            max_keys=self.cfg.max_alert_keys,
            on_evict=lambda name: metrics.EVICTIONS.labels(name).inc(),
        )
        capped = metrics.LABELS_CAPPED.labels
        self._station_label = LabelValues("station_id", self.cfg.max_label_values, lambda n: capped(n).inc())
        self._class_label = LabelValues("product_class", self.cfg.max_label_values, lambda n: capped(n).inc())
        self._decode_pool = ThreadPoolExecutor(self.cfg.decode_threads, thread_name_prefix="decode")
        self._model_pool = ThreadPoolExecutor(self.cfg.model_workers, thread_name_prefix="model")
        # Scoring tasks in intake order: one per worker waiting here, plus the one the publisher holds,
        # so a worker that finishes finds the next batch already fetched and decoding.
        self._queue: asyncio.Queue[asyncio.Task[ScoredBatch] | None] = asyncio.Queue(
            maxsize=self.cfg.model_workers
        )
        self.consumer: Any = None
        self.partitions: PartitionTransactions | None = None
        self.publisher: PartitionPublisher | None = None
        self.watchdog = ProgressWatchdog(self.cfg.progress_timeout_s)
        self.committed_batches = 0
        self.committed_records = 0  # frames whose outputs and offset this instance committed
        self._scoring = 0  # batches between intake and the end of their model run
        self._turn = 0  # which partition intake asks first (see ``in_turn``)
        self._hung = {"decode": 0, "model": 0}  # threads still busy past their timeout
        self.failure: BaseException | None = None
        self._failed = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------
    def fail(self, error: BaseException) -> None:
        """End the scorer: health red, intake stops, the group is left and ``run`` raises ``error``."""
        if self.failure is None:
            self.failure = error
            log_event(log, "scorer_failing", logging.ERROR, error=describe(error))
        self.health.set("failed", describe(error))
        metrics.HEALTHY.set(0)
        self._failed.set()

    async def run(self, stop: asyncio.Event) -> None:
        from shared.kafka.client import make_consumer

        self.consumer = make_consumer(
            self.settings,
            group_id=self.cfg.group_id,
            session_timeout_ms=self.cfg.session_timeout_ms,
            heartbeat_interval_ms=max(100, self.cfg.session_timeout_ms // 3),
            max_poll_records=self.cfg.max_batch,
        )
        self.partitions = PartitionTransactions(
            self.settings, self.consumer, make_producer=self._make_producer, on_failure=self.fail
        )
        self.publisher = PartitionPublisher(
            self.settings, self.partitions, self.alert_detector, count=self._count_committed
        )
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
        self.health.set("ok")
        metrics.HEALTHY.set(1)
        publisher = asyncio.create_task(self._publish_loop(), name="publish")
        watch = asyncio.create_task(self._watch(), name="watchdog")
        try:
            await self._intake_loop(stop, publisher)
        except Exception as exc:
            self.fail(exc if isinstance(exc, ScorerFailure) else ScorerFailure(describe(exc)))
        finally:
            log_event(
                log, "scorer_stopping", failed=self.failure is not None, batches_in_flight=self._scoring
            )
            watch.cancel()
            if self.failure is None and not publisher.done():
                # Publish what is queued, then stop (unless the publisher dies first).
                await self._enqueue(None, publisher, raise_if_stopped=False)
            if self.failure is not None:
                publisher.cancel()  # nothing more is committed: the partitions' next owners re-read it
            results = await asyncio.gather(publisher, watch, return_exceptions=True)
            if isinstance(results[0], Exception) and not isinstance(results[0], asyncio.CancelledError):
                self.fail(ScorerFailure(describe(results[0])))
            while not self._queue.empty():  # left behind by a failed publisher
                leftover = self._queue.get_nowait()
                if leftover is not None:
                    leftover.cancel()
            await self._leave()
        if self.failure is not None:
            raise self.failure
        log_event(
            log,
            "scorer_stopped",
            committed_batches=self.committed_batches,
            committed_records=self.committed_records,
        )

    async def _leave(self) -> None:
        """Leave the group (so it rebalances now, not after the session timeout) and close."""
        assert self.partitions is not None
        try:
            await asyncio.wait_for(self.consumer.stop(), _STOP_TIMEOUT_S)
        except Exception as exc:
            log_event(log, "consumer_stop_failed", logging.ERROR, error=describe(exc))
        await self.partitions.close()
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._model_pool.shutdown(wait=False, cancel_futures=True)

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

    async def _until_failed(self, step: Awaitable[T]) -> T:
        """``step``, unless the scorer fails first (then ``ScorerFailure``)."""
        task = asyncio.ensure_future(step)
        failing = asyncio.ensure_future(self._failed.wait())
        try:
            await asyncio.wait({task, failing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failing.cancel()
        if not task.done():
            task.cancel()
            raise ScorerFailure(describe(self.failure) if self.failure else "failed")
        return task.result()

    # -- intake: consume, decode, score ------------------------------------------------------------
    async def _intake_loop(self, stop: asyncio.Event, publisher: asyncio.Task[None]) -> None:
        assert self.partitions is not None
        while not stop.is_set() and not self._failed.is_set():
            self.watchdog.beat("intake", time.monotonic())
            if publisher.done():  # a publish failure we cannot handle ends the service
                publisher.result()
                return
            records, epochs = await self._until_failed(self._next_batch(stop))
            if not records:
                continue
            # During a rebalance wait for the new assignment; records fetched before it carry an old
            # epoch and are dropped when published (the assignment's seek brings them back).
            await self._until_failed(self.partitions.wait_unpaused())
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
        failing = asyncio.ensure_future(self._failed.wait())
        await asyncio.wait({putting, publisher, failing}, return_when=asyncio.FIRST_COMPLETED)
        failing.cancel()
        if not putting.done():
            putting.cancel()
            if raise_if_stopped:
                if publisher.done():
                    publisher.result()  # raises what ended the publisher
                raise ScorerFailure(describe(self.failure) if self.failure else "publisher stopped")

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
                state = partitions.state(r.topic, r.partition)
                epochs[(r.topic, r.partition, r.offset)] = state.epoch if state is not None else -1
                if state is not None:
                    state.fetched_next = max(state.fetched_next, r.offset + 1)
            return got

        async def buffered(limit: int) -> list[Any]:
            """Up to ``limit`` records the consumer already holds, asking each partition in turn."""
            got: list[Any] = []
            self._turn += 1
            for tp in in_turn(list(consumer.assignment()), self._turn):
                if len(got) >= limit:
                    break
                got += tagged(await consumer.getmany(tp, timeout_ms=0, max_records=limit - len(got)))
            return got

        records = await buffered(self.cfg.max_batch)
        if not records:
            records = tagged(await consumer.getmany(timeout_ms=_POLL_MS, max_records=self.cfg.max_batch))
            if not records:
                return [], epochs
        deadline = time.monotonic() + self.cfg.max_wait_ms / 1000
        while len(records) < self.cfg.max_batch and not stop.is_set():
            got = await buffered(self.cfg.max_batch - len(records))
            if not got:
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
        raw = [
            RawRecord(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ())) for r in records
        ]
        return raw, epochs

    async def _score(self, records: list[RawRecord], epochs: dict[RecordKey, int]) -> ScoredBatch:
        try:
            return await self._decode_and_score(records, epochs)
        finally:
            self._scoring -= 1

    async def _decode_and_score(self, records: list[RawRecord], epochs: dict[RecordKey, int]) -> ScoredBatch:
        loop = asyncio.get_running_loop()
        metrics.FRAMES_CONSUMED.inc(len(records))
        metrics.BATCH_FRAMES.observe(len(records))
        links = [link for link in (span_link(r.headers) for r in records) if link is not None]
        serving = self.holder.current()  # the only place a new model is swapped in: between batches
        started_ns = time.time_ns()
        with tracer.start_as_current_span(
            "score_batch", links=links, kind=trace.SpanKind.CONSUMER, start_time=started_ns
        ) as span:
            set_messaging_attributes(span, "process", self.frames_topic, batch_size=len(records))
            span.set_attribute("lineguard.batch_size", len(records))
            span.set_attribute("lineguard.model_version", serving.version)
            started = time.perf_counter()
            # Large frames are decoded only as far as this batch's model needs (its input size).
            reduce_to = serving.model.input_size
            decoded_or_bad = await asyncio.gather(*(self._decode(r, reduce_to) for r in records))
            metrics.STAGE_SECONDS.labels("decode").observe(time.perf_counter() - started)
            outcomes = [d for d in decoded_or_bad if isinstance(d, RecordOutcome)]
            good = [d for d in decoded_or_bad if isinstance(d, DecodedFrame)]
            if good:
                outcomes.extend(await self._run_model(serving, good))
            # Every output built and encoded here, before any transaction: what cannot be sent becomes
            # its record's dead letter now, not an error in the middle of a transaction.
            prepared = await loop.run_in_executor(
                self._decode_pool, lambda: [prepare(o, started_ns) for o in outcomes]
            )
        ordered = order_by_record(prepared)
        fetched_in = [epochs[(o.record.topic, o.record.partition, o.record.offset)] for o in ordered]
        return ScoredBatch(ordered, fetched_in, links)

    async def _bounded(self, stage: str, pool: ThreadPoolExecutor, work: Callable[[], T]) -> T:
        """``work`` in ``pool`` under ``score_timeout_s``. A thread still busy past it cannot be
        stopped: it is counted, and when every thread of the pool is hung the scorer fails."""
        future = asyncio.get_running_loop().run_in_executor(pool, work)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.cfg.score_timeout_s)
        except TimeoutError:
            metrics.TIMEOUTS.labels(stage).inc()
            self._hung[stage] += 1
            future.add_done_callback(lambda _: self._release(stage))
            size = self.cfg.decode_threads if stage == "decode" else self.cfg.model_workers
            if self._hung[stage] >= size:
                self.fail(ScorerFailure(f"every {stage} thread is hung past {self.cfg.score_timeout_s} s"))
            raise

    def _release(self, stage: str) -> None:
        self._hung[stage] -= 1

    async def _decode(self, record: RawRecord, reduce_to: int | None) -> DecodedFrame | RecordOutcome:
        def decode() -> DecodedFrame | RecordOutcome:
            return decode_record(
                record,
                max_image_bytes=self.cfg.max_image_bytes,
                max_pixels=self.cfg.max_image_pixels,
                reduce_to=reduce_to,
                store=self.claims,
            )

        try:
            return await self._bounded("decode", self._decode_pool, decode)
        except TimeoutError:
            return failed(record, "decode_timeout", f"decoding took longer than {self.cfg.score_timeout_s} s")

    async def _run_model(self, serving: ServingModel, good: list[DecodedFrame]) -> list[RecordOutcome]:
        loop = asyncio.get_running_loop()
        timings: dict[str, float] = {}
        hints = [d.frame.product for d in good]
        started = time.perf_counter()
        try:
            results = await self._bounded(
                "model",
                self._model_pool,
                lambda: serving.model.score_batch(
                    [d.pixels for d in good], hints, timings, frame_sizes=[d.frame_size for d in good]
                ),
            )
            error = ""
        except TimeoutError:
            log_event(
                log, "model_timed_out", logging.ERROR, seconds=self.cfg.score_timeout_s, frames=len(good)
            )
            results, error = None, f"model timed out after {self.cfg.score_timeout_s} s"
        except Exception as exc:  # a model bug must not stop the line: the PLC gets "error" verdicts
            log_event(log, "model_failed", logging.ERROR, error=describe(exc), frames=len(good))
            results, error = None, f"model failed: {type(exc).__name__}"
        metrics.STAGE_SECONDS.labels("model").observe(time.perf_counter() - started)
        if "knn" in timings:
            metrics.STAGE_SECONDS.labels("knn").observe(timings["knn"])
        return await loop.run_in_executor(
            self._decode_pool,
            lambda: build_outcomes(
                good,
                results,
                model_version=serving.version,
                late_policy=self.cfg.late_policy,
                non_finite_policy=self.cfg.non_finite_decision,
                error=error,
            ),
        )

    # -- publish: one transaction per input partition ----------------------------------------------
    async def _publish_loop(self) -> None:
        try:
            await self._publish_queued()
        except Exception as exc:  # a partition that cannot be recovered, or a bug: the scorer ends
            self.fail(exc if isinstance(exc, ScorerFailure) else ScorerFailure(describe(exc)))

    async def _publish_queued(self) -> None:
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
        assert self.partitions is not None and self.publisher is not None
        state = self.partitions.state(*key)
        if state is None:
            metrics.TRANSACTIONS.labels("stale").inc()
            return  # no longer ours
        # Fetched before the partition's last seek (rebalance, recovery), or already committed:
        # dropped, because that seek fetches them again.
        outcomes = fresh_outcomes(tagged, state.epoch, state.next_offset)
        if len(outcomes) < len(tagged):
            metrics.TRANSACTIONS.labels("stale").inc()
        if not outcomes:
            return
        with tracer.start_as_current_span("publish", links=batch.links, kind=trace.SpanKind.PRODUCER) as span:
            # One transaction per input partition; its verdicts (and defects, dead letters) go out.
            set_messaging_attributes(
                span, "publish", self.settings.topic("verdicts"), batch_size=len(outcomes)
            )
            span.set_attribute("lineguard.partition", key[1])
            if await self.publisher.publish(state, outcomes):
                self.committed_batches += 1
                self.committed_records += len(outcomes)

    # -- progress ----------------------------------------------------------------------------------
    async def _watch(self) -> None:
        """Every few seconds: each partition's end offset and position against the watchdog; health
        green while everything makes progress, and the scorer fails when something does not."""
        assert self.partitions is not None
        from aiokafka import TopicPartition

        interval = min(5.0, self.cfg.progress_timeout_s / 4)
        ends: dict[Any, int] = {}
        while not self._failed.is_set():
            await asyncio.sleep(interval)
            states = self.partitions.states()
            tps = {TopicPartition(s.topic, s.partition): s for s in states}
            try:
                if tps:
                    ends.update(await asyncio.wait_for(self.consumer.end_offsets(list(tps)), interval * 2))
            except Exception as exc:  # Kafka unreachable: judge by what is known
                log_event(log, "end_offsets_failed", logging.WARNING, error=describe(exc))
            now = time.monotonic()
            for tp, state in tps.items():
                try:
                    position: int | None = await asyncio.wait_for(self.consumer.position(tp), 1.0)
                except Exception:
                    position = None
                end = ends.get(tp)
                self.watchdog.observe(
                    tp,
                    now,
                    end=end,
                    position=position,
                    committed=state.next_offset,
                    fetched=state.fetched_next,
                )
                if end is not None:
                    # Not yet fetched, plus fetched and not yet committed. Counting from the
                    # position, not the committed offset, leaves out the transaction markers the
                    # consumer has stepped over (a marker is an offset but not a frame).
                    unread = end - position if position is not None else end - state.fetched_next
                    in_hand = max(0, state.fetched_next - state.next_offset)
                    metrics.CONSUMER_LAG.labels(str(tp.partition)).set(max(0, unread) + in_hand)
            self.watchdog.keep_only(set(tps))
            stalls = self.watchdog.stalls(time.monotonic(), paused_since=self.partitions.paused_since)
            if not stalls:
                self.health.set("ok")
                metrics.HEALTHY.set(1)
                continue
            for stall in stalls:
                metrics.STALLS.labels(stall.kind).inc()
                log_event(
                    log,
                    "progress_stalled",
                    logging.ERROR,
                    kind=stall.kind,
                    what=stall.what,
                    seconds=round(stall.seconds, 1),
                    detail=stall.detail,
                )
            self.health.set("stalled", "; ".join(f"{s.kind} {s.what}: {s.seconds:.0f} s" for s in stalls))
            first = stalls[0]
            self.fail(ScorerFailure(f"no progress for {first.seconds:.0f} s ({first.kind} {first.what})"))

    # -- metrics of what was committed ---------------------------------------------------------------
    def _count_committed(self, outcomes: list[RecordOutcome], alerts: list[AlertEvent]) -> None:
        for outcome in outcomes:
            if outcome.dead_letter is not None:
                metrics.DEAD_LETTERS.labels(outcome.dead_letter.reason).inc()
                continue
            verdict = outcome.verdict
            assert verdict is not None
            product = self._class_label(verdict.product_class)
            station = self._station_label(verdict.station_id)
            metrics.prepare_station(station)
            metrics.VERDICTS.labels(product, verdict.decision, station).inc()
            if outcome.non_finite:
                metrics.NON_FINITE.inc()
            elif verdict.decision != Decision.ERROR:  # an error verdict carries no score
                metrics.SCORES.labels(product).observe(verdict.score)
                metrics.ROUTE_CONFIDENCE.labels(product).observe(verdict.route_confidence)
            metrics.END_TO_END_SECONDS.observe(verdict.latency_ms / 1000)
            if verdict.late:
                metrics.LATE_VERDICTS.inc()
            if outcome.defect is not None:
                metrics.DEFECT_EVENTS.inc()
        for alert in alerts:
            metrics.ALERTS.labels(alert.kind).inc()
            log_event(log, "alert_raised", kind=alert.kind, station=alert.station_id, summary=alert.summary)


def _report_watcher_end(task: asyncio.Task[None]) -> None:
    """The watcher only ends on shutdown; anything else means hot swap is off, which must be loud."""
    if not task.cancelled() and task.exception() is not None:
        error = task.exception()
        log_event(log, "model_watcher_failed", logging.ERROR, error=f"{type(error).__name__}: {error}")


async def serve(
    settings: Any, model_dir: Path | None, stop: asyncio.Event, health: Health | None = None
) -> int:
    """Load the model (or wait for one on the models topic), then score until ``stop``.

    Returns 0 after a clean stop, 1 when the scorer failed (``ScorerFailure``, logged): it has left
    the group, and the caller should exit at once.
    """
    holder = ModelHolder()
    if model_dir is not None:
        serving = await asyncio.to_thread(
            load_model_dir,
            model_dir,
            weights_dir=settings.scorer.weights_dir,
            options=settings.scorer.runtime_options(),
            review_until_confirmed=settings.scorer.review_until_confirmed,
        )
        holder = ModelHolder(serving)
        log_event(
            log,
            "model_loaded",
            version=serving.version,
            path=str(model_dir),
            runtime=serving.model.extractor.runtime,
            precision=serving.model.extractor.backend.precision,
            device=settings.scorer.device,
            # faiss's OpenBLAS kernel: a generic one ("Prescott") would make the search several
            # times slower (see shared.engine.scorers.index).
            search_blas_kernel=faiss_blas_kernel(),
        )
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
        await ScorerService(settings, holder, health).run(stop)
    except ScorerFailure as exc:
        log_event(log, "scorer_failed", logging.ERROR, error=describe(exc))
        return 1
    finally:
        if watcher_task is not None:
            watcher_task.cancel()
            await asyncio.gather(watcher_task, return_exceptions=True)
    return 0
