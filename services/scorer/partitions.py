"""One transactional producer per assigned frames partition, kept in step with the consumer group.

Why per partition: aiokafka's transactions use the pre-KIP-447 protocol (the offset commit inside a
transaction carries no group generation), so fencing must come from the transactional id itself.
The id ``{prefix}-{topic}-{partition}`` belongs to the partition, not to the process: whoever is
assigned the partition starts a producer with that id, which fences any zombie still holding it and
makes the broker finish (abort or complete) the zombie's open transaction before we read the
partition's committed offset. Only then do we seek, so no frame is scored from a stale position.

Every reset of a partition's position (assignment, recovery) is a seek to its first uncommitted
offset together with a new *epoch*, in one step. Each record is tagged with its
partition's epoch the moment ``getmany`` returns it (aiokafka never returns data fetched before a
seek after that seek), and publishing drops records of an older epoch or below the committed offset:
the seek already brought them back, so dropping them loses nothing and duplicates nothing.

Recovery (``recover``): a partition whose producer is unusable (fenced, its transaction timed out or
its id expired, an abort or a commit that failed or timed out) gets a new producer with the same id,
which finishes whatever the old one left open; then the committed offset is read and the partition
sought there. If that cannot be done within a few tries the scorer fails (``ScorerFailure``): it leaves
the group and exits non-zero, so the group rebalances instead of the partition stalling.

Rebalance-listener errors are caught here (aiokafka swallows them and would leave intake waiting
forever) and reported to ``on_failure``, which ends the scorer the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from services.scorer import metrics
from services.scorer.core import OutRecord, ScorerFailure, describe
from shared.messages.schemas import AlertEvent
from shared.telemetry.logging import log_event

T = TypeVar("T")

log = logging.getLogger("lineguard.scorer.partitions")


_RECOVER_TRIES = 3
_FENCED_WINDOW_S = 60.0
_FENCED_PER_WINDOW = 5  # fenced recoveries of one partition within the window before the scorer gives up


@dataclass
class PartitionState:
    topic: str
    partition: int
    producer: Any  # AIOKafkaProducer, transactional
    epoch: int
    next_offset: int  # first offset not yet committed
    fetched_next: int = 0  # one past the last offset fetched in this epoch (work in hand when > next_offset)
    # Offsets whose outputs the broker refused, with the dead-letter level to use and why (publish.py).
    refused: dict[int, tuple[int, str, str]] = field(default_factory=dict)
    # Operator alerts raised by verdicts not yet committed: raised once per offset, sent with it.
    alerts: dict[int, list[tuple[AlertEvent, OutRecord]]] = field(default_factory=dict)
    alerts_seen: int = 0  # verdicts below this offset have been shown to the alert detector
    fenced_at: list[float] = field(default_factory=list)

    def committed_up_to(self, next_offset: int) -> None:
        """Everything below ``next_offset`` is committed: forget what was kept for it."""
        self.next_offset = next_offset
        for kept in (self.refused, self.alerts):
            for offset in [o for o in kept if o < next_offset]:
                del kept[offset]


def transactional_id(prefix: str, topic: str, partition: int) -> str:
    return f"{prefix}-{topic}-{partition}"


class PartitionTransactions:
    """Owns the per-partition producers; is the consumer's rebalance listener (via ``listener()``)."""

    retry_backoff_s = 0.5  # first pause between recovery tries, doubled each time

    def __init__(
        self,
        settings: Any,
        consumer: Any,
        *,
        make_producer: Any = None,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        from shared.kafka.client import make_producer as default_make_producer

        self._settings = settings
        self._cfg = settings.scorer
        self._consumer = consumer
        self._make_producer = make_producer or default_make_producer
        self._on_failure = on_failure or _raise
        self._states: dict[tuple[str, int], PartitionState] = {}
        self._epoch = 0
        self._inflight = 0
        self._idle = asyncio.Condition()
        self._unpaused = asyncio.Event()  # cleared from a revocation until the next assignment
        self.paused_since: float | None = time.monotonic()  # no assignment yet

    # -- batch bookkeeping -------------------------------------------------------------------------
    def state(self, topic: str, partition: int) -> PartitionState | None:
        return self._states.get((topic, partition))

    def states(self) -> list[PartitionState]:
        return list(self._states.values())

    def assigned(self) -> list[int]:
        """Frames partitions this scorer owns now."""
        return sorted(partition for _, partition in self._states)

    @property
    def paused(self) -> bool:
        return not self._unpaused.is_set()

    async def wait_unpaused(self) -> None:
        await self._unpaused.wait()

    def epoch_of(self, topic: str, partition: int) -> int:
        state = self._states.get((topic, partition))
        return state.epoch if state is not None else -1

    def batch_started(self) -> None:
        self._inflight += 1

    async def batch_finished(self) -> None:
        async with self._idle:
            self._inflight -= 1
            self._idle.notify_all()

    async def wait_idle(self) -> None:
        async with self._idle:
            await self._idle.wait_for(lambda: self._inflight == 0)

    def reset(self, state: PartitionState, offset: int) -> None:
        """Fetch the partition again from ``offset`` under a new epoch (no await: one atomic step)."""
        from aiokafka import TopicPartition

        self._epoch += 1
        state.epoch = self._epoch
        state.next_offset = state.fetched_next = offset
        self._consumer.seek(TopicPartition(state.topic, state.partition), offset)

    def still_assigned(self, state: PartitionState) -> bool:
        """Whether the group still gives us this partition (as far as this consumer knows)."""
        from aiokafka import TopicPartition

        if self._states.get((state.topic, state.partition)) is not state:
            return False
        return TopicPartition(state.topic, state.partition) in self._consumer.assignment()

    async def recover(self, state: PartitionState, why: str, *, fenced: bool = False) -> None:
        """A new producer for the partition, then a seek to its committed offset (see the module doc).

        A partition no longer assigned is dropped instead (its new owner's producer fenced ours).
        Raises ``ScorerFailure`` when recovery keeps failing or the partition keeps being fenced.
        """
        from aiokafka import TopicPartition

        if not self.still_assigned(state):
            await self.drop(state, f"{why}; no longer assigned")
            return
        tp = TopicPartition(state.topic, state.partition)
        if fenced:
            now = time.monotonic()
            state.fenced_at = [t for t in state.fenced_at if now - t < _FENCED_WINDOW_S] + [now]
            if len(state.fenced_at) > _FENCED_PER_WINDOW:
                times = len(state.fenced_at)
                raise ScorerFailure(f"partition {state.partition} fenced {times} times in a minute")
        # Records fetched from here on belong to the old position: a new epoch drops them.
        self._epoch += 1
        state.epoch = self._epoch
        self._consumer.pause(tp)
        log_event(log, "partition_recovering", logging.WARNING, partition=state.partition, why=why)
        await _stop_quietly(state.producer, self._cfg.abort_timeout_s)
        started = time.monotonic()
        # A new producer with the partition's id finishes (aborts or completes) whatever the old one
        # left open; only then is the committed offset final.
        state.producer = await self._retrying(
            f"start a new producer for partition {state.partition}",
            lambda: self._start_producer(state.topic, state.partition),
        )
        committed = await self._retrying(
            f"read the committed offset of partition {state.partition}",
            lambda: self._committed(state.topic, state.partition),
        )
        if self._states.get((state.topic, state.partition)) is not state:  # revoked meanwhile
            await _stop_quietly(state.producer, self._cfg.abort_timeout_s)
            return
        # Our own last commit is committed; a commit whose answer we lost may have gone through too.
        self.reset(state, max(committed, state.next_offset))
        self._consumer.resume(tp)
        metrics.RECOVERIES.labels("fenced" if fenced else "producer").inc()
        log_event(
            log,
            "partition_recovered",
            logging.WARNING,
            partition=state.partition,
            offset=state.next_offset,
            seconds=round(time.monotonic() - started, 3),
        )

    async def _committed(self, topic: str, partition: int) -> int:
        from aiokafka import TopicPartition

        tp = TopicPartition(topic, partition)
        timeout = self._cfg.recover_timeout_s
        committed = await asyncio.wait_for(self._consumer.committed(tp), timeout)
        if committed is None:  # nothing committed yet: the group starts at the beginning
            committed = (await asyncio.wait_for(self._consumer.beginning_offsets([tp]), timeout))[tp]
        return int(committed)

    async def _retrying(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        """``step`` with a timeout, tried a few times; then ``ScorerFailure``."""
        error: BaseException | None = None
        for attempt in range(1, _RECOVER_TRIES + 1):
            try:
                return await asyncio.wait_for(step(), self._cfg.recover_timeout_s)
            except (asyncio.CancelledError, ScorerFailure):
                raise
            except Exception as exc:
                error = exc
                if isinstance(exc, TimeoutError):
                    metrics.TIMEOUTS.labels("recover").inc()
                log_event(
                    log, "recovery_failed", logging.ERROR, what=what, attempt=attempt, error=describe(exc)
                )
                await asyncio.sleep(min(5.0, self.retry_backoff_s * 2 ** (attempt - 1)))
        raise ScorerFailure(
            f"could not {what} after {_RECOVER_TRIES} tries: {describe(error)}" if error else what
        )

    async def drop(self, state: PartitionState, why: str) -> None:
        """Give up a partition that is no longer ours (another scorer owns it now)."""
        from aiokafka import TopicPartition

        self._states.pop((state.topic, state.partition), None)
        tp = TopicPartition(state.topic, state.partition)
        if tp in self._consumer.assignment():
            self._consumer.pause(tp)
        metrics.ASSIGNED_PARTITIONS.set(len(self._states))
        log_event(
            log, "partition_dropped", logging.WARNING, topic=state.topic, partition=state.partition, why=why
        )
        await _stop_quietly(state.producer, self._cfg.abort_timeout_s)

    # -- rebalance listener ------------------------------------------------------------------------
    def listener(self) -> Any:
        from aiokafka.abc import ConsumerRebalanceListener

        owner = self

        class _Listener(ConsumerRebalanceListener):
            # aiokafka logs and swallows a listener's exception, then carries on as if the rebalance
            # had worked: report it instead, which ends the scorer (see ``on_failure``).
            async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
                await owner._guarded("revoked", owner.on_revoked(revoked))

            async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
                await owner._guarded("assigned", owner.on_assigned(assigned))

        return _Listener()

    async def _guarded(self, what: str, step: Awaitable[None]) -> None:
        try:
            await step
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.REBALANCE_FAILURES.inc()
            log_event(log, "rebalance_failed", logging.ERROR, step=what, error=describe(exc))
            self._on_failure(ScorerFailure(f"partitions {what}: {describe(exc)}"))

    async def on_revoked(self, revoked: Iterable[Any]) -> None:
        # Finish (commit or abort) every batch in flight before the partitions move on. Publishing is
        # bounded by its timeouts; past the progress timeout something is wrong and we stop waiting
        # (a late commit is then fenced by the partition's next owner).
        self._unpaused.clear()
        self.paused_since = time.monotonic()
        try:
            await asyncio.wait_for(self.wait_idle(), self._cfg.progress_timeout_s)
        except TimeoutError:
            log_event(log, "revocation_not_idle", logging.ERROR, batches=self._inflight)
        log_event(log, "partitions_revoked", partitions=sorted(tp.partition for tp in revoked))

    async def on_assigned(self, assigned: Iterable[Any]) -> None:
        assigned = list(assigned)
        wanted = {(tp.topic, tp.partition) for tp in assigned}
        for key in [k for k in self._states if k not in wanted]:
            await _stop_quietly(self._states.pop(key).producer, self._cfg.abort_timeout_s)
        # Partitions we keep were ours without a break, so what we committed is what is committed.
        kept_next = {key: state.next_offset for key, state in self._states.items()}
        new = sorted(k for k in wanted if k not in self._states)  # sorted: the same order every run
        producers = await asyncio.gather(
            *(
                self._retrying(f"start the producer of partition {p}", partial(self._start_producer, t, p))
                for t, p in new
            )
        )
        for (topic, partition), producer in zip(new, producers, strict=True):
            self._states[(topic, partition)] = PartitionState(topic, partition, producer, 0, 0)
        # Producers are initialised (zombies fenced, their transactions finished): offsets are final.
        for tp in assigned:
            committed = await self._retrying(
                f"read the committed offset of partition {tp.partition}",
                partial(self._committed, tp.topic, tp.partition),
            )
            # The group coordinator answers with the last *completed* offset commit: right after our
            # own transaction commits, its markers may still be on their way and the answer one
            # transaction old. Re-reading from there would score those frames twice.
            committed = max(committed, kept_next.get((tp.topic, tp.partition), 0))
            self.reset(self._states[(tp.topic, tp.partition)], committed)
        if assigned:
            self._consumer.resume(*assigned)
        metrics.ASSIGNED_PARTITIONS.set(len(self._states))
        self._unpaused.set()
        self.paused_since = None
        log_event(
            log,
            "partitions_assigned",
            partitions={f"{s.topic}[{s.partition}]": s.next_offset for s in self._states.values()},
        )

    async def _start_producer(self, topic: str, partition: int) -> Any:
        txn_id = transactional_id(self._settings.scorer.transactional_id_prefix, topic, partition)
        # A send right after the previous commit can be refused as retriable while the broker still
        # writes that commit's markers (seen as NotEnoughReplicasError from a one-replica broker);
        # retrying after 20 ms instead of aiokafka's 100 ms takes that out of the verdict latency,
        # as Kafka's Java producer does for the same case.
        producer = self._make_producer(
            self._settings,
            transactional_id=txn_id,
            linger_ms=0,
            retry_backoff_ms=20,
            transaction_timeout_ms=self._cfg.transaction_timeout_ms,
        )
        try:
            await producer.start()
            # An empty transaction waits for the producer id: the broker hands it out only after the
            # previous holder's open transaction is aborted or completed, which is what makes the
            # committed offset read next authoritative.
            await producer.begin_transaction()
            await producer.commit_transaction()
            # Metadata of every output topic now, not on the first verdict's send (a round trip each).
            for name in ("verdicts", "defects", "dlq", "alerts"):
                await producer.partitions_for(self._settings.topic(name))
        except BaseException:
            await _stop_quietly(producer, self._cfg.abort_timeout_s)
            raise
        return producer

    async def close(self) -> None:
        states, self._states = list(self._states.values()), {}
        await asyncio.gather(*(_stop_quietly(s.producer, self._cfg.abort_timeout_s) for s in states))
        metrics.ASSIGNED_PARTITIONS.set(0)


def _raise(error: BaseException) -> None:
    raise error


async def _stop_quietly(producer: Any, timeout_s: float) -> None:
    """Stop a producer; one that is fenced or cannot flush is abandoned after ``timeout_s``."""
    try:
        await asyncio.wait_for(producer.stop(), timeout_s)
    except Exception as exc:  # a fenced producer may complain on the way out; it is gone anyway
        log_event(log, "producer_stop_failed", logging.WARNING, error=type(exc).__name__)
