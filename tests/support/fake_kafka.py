"""An in-memory stand-in for the two aiokafka objects the scorer's publisher drives, for unit tests of
its fault handling: a transactional producer whose every step can be made to fail, hang or be
fenced, and the consumer calls the partition bookkeeping makes. What commits is recorded on a shared
``FakeBroker``; aborted records never show there. (The real-broker behaviour is covered by the
integration tests.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition


@dataclass
class Committed:
    records: list[tuple[str, bytes, bytes | None]]  # topic, value, key
    offsets: dict[TopicPartition, int]


@dataclass
class FakeBroker:
    transactions: list[Committed] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    producers_started: int = 0

    def committed_records(self, topic: str | None = None) -> list[tuple[str, bytes, bytes | None]]:
        return [r for t in self.transactions for r in t.records if topic is None or r[0] == topic]


HANG = "hang"  # a step that never finishes


@dataclass
class Faults:
    """What goes wrong, decided per call. Each hook returns None (fine), an exception to raise or
    deliver, or ``HANG``."""

    start: Callable[[], Any] = lambda: None
    send: Callable[[str, bytes], Any] = lambda topic, value: None  # raised by send() itself
    deliver: Callable[[str, bytes], Any] = lambda topic, value: None  # the delivery future's result
    offsets: Callable[[], Any] = lambda: None
    commit: Callable[[], Any] = lambda: None
    abort: Callable[[], Any] = lambda: None
    commit_lands: bool = False  # a hanging or failing commit still commits (its answer is lost)


async def _act(outcome: Any) -> None:
    if outcome == HANG:
        await asyncio.Event().wait()
    if isinstance(outcome, BaseException):
        raise outcome


class FakeProducer:
    def __init__(self, broker: FakeBroker, faults: Faults) -> None:
        self.broker, self.faults = broker, faults
        self.pending: list[tuple[str, bytes, bytes | None]] = []
        self.offsets: dict[TopicPartition, int] = {}
        self.calls: list[str] = []
        self.fatal: BaseException | None = None
        self.stopped = False

    async def start(self) -> None:
        self.calls.append("start")
        await _act(self.faults.start())
        self.broker.producers_started += 1

    async def stop(self) -> None:
        self.calls.append("stop")
        self.stopped = True

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    async def begin_transaction(self) -> None:
        self.calls.append("begin")
        if self.fatal is not None:
            raise AssertionError("Invalid state transition")  # what aiokafka raises when fatal
        self.pending, self.offsets = [], {}

    async def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None) -> Any:
        await _act(self.faults.send(topic, value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        outcome = self.faults.deliver(topic, value)
        if outcome == HANG:
            return future
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
            return future
        self.pending.append((topic, value, key))
        future.set_result(None)
        return future

    async def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int], group_id: str) -> None:
        await _act(self.faults.offsets())
        self.offsets = dict(offsets)

    async def commit_transaction(self) -> None:
        self.calls.append("commit")
        if not self.pending and not self.offsets:  # aiokafka ends an empty transaction locally
            return
        outcome = self.faults.commit()
        if outcome is None or self.faults.commit_lands:
            self.broker.transactions.append(Committed(list(self.pending), dict(self.offsets)))
            self.broker.offsets.update(self.offsets)
        await _act(outcome)

    async def abort_transaction(self) -> None:
        self.calls.append("abort")
        await _act(self.faults.abort())
        self.pending, self.offsets = [], {}


class FakeConsumer:
    """The consumer calls of ``PartitionTransactions``: committed offsets from the broker, seeks."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.assigned: set[TopicPartition] = set()
        self.seeks: list[tuple[int, int]] = []
        self.paused: set[TopicPartition] = set()
        self.committed_fault: Callable[[], Any] = lambda: None

    async def committed(self, tp: TopicPartition) -> int | None:
        await _act(self.committed_fault())
        return self.broker.offsets.get(tp)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp.partition, offset))

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)
