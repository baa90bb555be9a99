"""The publisher's fault handling, step by step (issue 9, findings 2 and 3), on an in-memory producer
whose every step can fail, hang or be fenced. The same faults on the real broker are in
tests/integration/test_scorer_faults.py."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, ProducerFenced

from services.scorer.alerts import AlertDetector, AlertRules
from services.scorer.core import RawRecord, RecordOutcome, ScorerFailure, failed
from services.scorer.outputs import prepare
from services.scorer.partitions import PartitionState, PartitionTransactions
from services.scorer.publish import PartitionPublisher
from shared.messages.codec import decode
from shared.messages.schemas import DeadLetter, Verdict
from shared.settings import Settings
from tests.support import messages
from tests.support.fake_kafka import HANG, FakeBroker, FakeConsumer, FakeProducer, Faults

TOPIC = "lineguard.frames"
TP = TopicPartition(TOPIC, 0)


def settings(**scorer: Any) -> Settings:
    values = {
        "send_timeout_s": 0.3,
        "commit_timeout_s": 0.3,
        "abort_timeout_s": 0.3,
        "recover_timeout_s": 0.5,
        "score_timeout_s": 1.0,
        "progress_timeout_s": 5.0,
        "publish_attempts": 3,
        "transaction_timeout_ms": 2000,
        **scorer,
    }
    base = Settings()
    return base.model_copy(update={"scorer": base.scorer.model_copy(update=values)})


def verdict(offset: int, decision: str = "pass", station: str = "st") -> Verdict:
    made = messages.verdict(
        f"f{offset}",
        decision,
        raw_score=1.0,
        threshold=2.0,
        model_version="v",
        captured_at=1,
        latency_ms=1.0,
        line_id="line",
        station_id=station,
        camera_id="cam",
    )
    return dataclasses.replace(made, decided_at=2 + offset)  # one nanosecond apart, in offset order


def outcomes(offsets: range, decision: str = "pass") -> list[RecordOutcome]:
    return [
        prepare(RecordOutcome(RawRecord(TOPIC, 0, o, b"cam", b"v", ()), verdict=verdict(o, decision)))
        for o in offsets
    ]


class Line:
    """A publisher with one assigned partition on a fake broker; each new producer gets ``faults``."""

    def __init__(self, faults: Faults | None = None, **scorer: Any) -> None:
        self.broker = FakeBroker()
        self.faults = faults or Faults()
        self.consumer = FakeConsumer(self.broker)
        self.consumer.assigned = {TP}
        self.producers: list[FakeProducer] = []
        self.settings = settings(**scorer)
        self.partitions = PartitionTransactions(self.settings, self.consumer, make_producer=self._producer)
        self.partitions.retry_backoff_s = 0.01
        rules = AlertRules(consecutive_rejects=2)
        self.publisher = PartitionPublisher(self.settings, self.partitions, AlertDetector(rules))

    def _producer(self, settings: Any, **options: Any) -> FakeProducer:
        self.producers.append(FakeProducer(self.broker, self.faults))
        return self.producers[-1]

    async def state(self) -> PartitionState:
        await self.partitions.on_assigned([TP])
        state = self.partitions.state(TOPIC, 0)
        assert state is not None
        self.consumer.seeks.clear()
        return state


async def test_a_verdict_the_topic_refuses_aborts_and_its_frame_is_dead_lettered_not_committed_away() -> None:
    refused = verdict(1)

    def deliver(topic: str, value: bytes) -> Any:
        if topic == "lineguard.verdicts" and decode(value, Verdict).frame_id == refused.frame_id:
            return MessageSizeTooLargeError()
        return None

    line = Line(Faults(deliver=deliver))
    state = await line.state()
    assert await line.publisher.publish(state, outcomes(range(3)))

    (committed,) = line.broker.transactions
    topics = [t for t, _, _ in committed.records]
    assert topics == ["lineguard.verdicts", "lineguard.dlq", "lineguard.verdicts"]
    letter = decode(committed.records[1][1], DeadLetter)
    assert (letter.reason, letter.source_offset) == ("output_rejected", 1)
    assert "verdicts topic refused the verdict" in letter.detail and "MessageSizeTooLarge" in letter.detail
    assert committed.offsets == {TP: 3} and state.next_offset == 3
    assert line.producers[0].calls.count("abort") == 1  # the first transaction never committed
    assert not state.refused  # forgotten once committed


async def test_a_delivery_that_never_completes_times_out_is_aborted_and_retried() -> None:
    calls = {"n": 0}

    def deliver(topic: str, value: bytes) -> Any:
        calls["n"] += 1
        return HANG if calls["n"] == 1 else None

    line = Line(Faults(deliver=deliver))
    state = await line.state()
    started = time.monotonic()
    assert await line.publisher.publish(state, outcomes(range(2)))
    assert time.monotonic() - started < 3
    assert [c for c in line.producers[0].calls if c in ("abort", "commit")] == ["commit", "abort", "commit"]
    assert len(line.broker.committed_records("lineguard.verdicts")) == 2


async def test_retries_are_bounded_then_the_partition_is_recovered_from_its_committed_offset() -> None:
    line = Line(Faults(deliver=lambda topic, value: KafkaTimeoutError()), publish_attempts=2)
    state = await line.state()
    line.broker.offsets[TP] = 5
    state.next_offset = state.fetched_next = 5
    epoch = state.epoch
    assert not await line.publisher.publish(state, outcomes(range(5, 8)))
    assert line.producers[0].calls.count("abort") == 2 and line.producers[0].stopped
    assert len(line.producers) == 2  # a new producer with the partition's id
    assert line.consumer.seeks == [(0, 5)] and state.epoch > epoch and TP not in line.consumer.paused
    assert line.broker.committed_records("lineguard.verdicts") == []


@pytest.mark.parametrize("step", ["commit", "offsets"])
async def test_a_fenced_producer_is_replaced_and_the_partition_sought_back(step: str) -> None:
    faults = Faults()
    line = Line(faults)
    state = await line.state()
    setattr(faults, step, lambda: ProducerFenced())
    assert not await line.publisher.publish(state, outcomes(range(2)))
    faults.commit = faults.offsets = lambda: None
    assert len(line.producers) == 2 and line.consumer.seeks == [(0, 0)]
    assert state.producer is line.producers[1]
    # The partition goes on with the new producer.
    assert await line.publisher.publish(state, outcomes(range(2)))
    assert len(line.broker.committed_records("lineguard.verdicts")) == 2


async def test_a_commit_whose_answer_is_lost_is_settled_by_the_committed_offset() -> None:
    faults = Faults(commit_lands=True)
    line = Line(faults)
    state = await line.state()
    faults.commit = lambda: HANG  # the commit lands on the broker, its answer never comes
    assert not await line.publisher.publish(state, outcomes(range(4)))
    assert line.consumer.seeks == [(0, 4)] and state.next_offset == 4  # not re-read: no duplicates


async def test_a_failed_abort_recovers_the_partition() -> None:
    line = Line(Faults(deliver=lambda topic, value: KafkaTimeoutError(), abort=lambda: RuntimeError("abort")))
    state = await line.state()
    assert not await line.publisher.publish(state, outcomes(range(2)))
    assert len(line.producers) == 2 and line.consumer.seeks == [(0, 0)]


async def test_a_producer_that_cannot_begin_is_replaced() -> None:
    line = Line()
    state = await line.state()
    line.producers[0].fatal = ProducerFenced()
    assert not await line.publisher.publish(state, outcomes(range(1)))
    assert len(line.producers) == 2


async def test_a_partition_no_longer_assigned_is_dropped_not_taken_back() -> None:
    line = Line(Faults(commit=lambda: ProducerFenced()))
    state = await line.state()
    line.consumer.assigned = set()  # the group gave it to another scorer
    assert not await line.publisher.publish(state, outcomes(range(1)))
    assert len(line.producers) == 1 and line.partitions.state(TOPIC, 0) is None


async def test_a_partition_that_cannot_be_recovered_ends_the_scorer() -> None:
    faults = Faults()
    line = Line(faults)
    state = await line.state()
    faults.commit = lambda: ProducerFenced()
    faults.start = lambda: KafkaTimeoutError()
    with pytest.raises(ScorerFailure, match="new producer"):
        await line.publisher.publish(state, outcomes(range(1)))


async def test_a_partition_fenced_again_and_again_ends_the_scorer() -> None:
    line = Line(Faults(commit=lambda: ProducerFenced()))
    state = await line.state()
    with pytest.raises(ScorerFailure, match="fenced"):
        for _ in range(10):
            await line.publisher.publish(state, outcomes(range(1)))


async def test_a_refused_dead_letter_falls_back_to_a_truncated_then_a_bare_copy() -> None:
    refusals = {"n": 0}

    def deliver(topic: str, value: bytes) -> Any:
        if topic == "lineguard.dlq" and refusals["n"] < 2:
            refusals["n"] += 1
            return MessageSizeTooLargeError()
        return None

    line = Line(Faults(deliver=deliver))
    state = await line.state()
    bad = prepare(failed(RawRecord(TOPIC, 0, 0, b"k", b"\xc1" * 5000, (("h", b"v"),)), "malformed", "x"))
    assert await line.publisher.publish(state, [bad])
    (record,) = line.broker.committed_records("lineguard.dlq")
    letter = decode(record[1], DeadLetter)
    assert letter.truncated and letter.original_value == b"" and letter.original_value_size == 5000
    assert letter.reason == "malformed" and letter.detail.count("dlq topic refused") == 2


async def test_a_dlq_that_refuses_even_a_bare_letter_ends_the_scorer() -> None:
    line = Line(
        Faults(deliver=lambda topic, value: MessageSizeTooLargeError() if topic.endswith("dlq") else None)
    )
    state = await line.state()
    bad = prepare(failed(RawRecord(TOPIC, 0, 0, None, b"\xc1", ()), "malformed", "x"))
    with pytest.raises(ScorerFailure, match="bare dead letter"):
        await line.publisher.publish(state, [bad])
    assert line.broker.committed_records("lineguard.dlq") == []


async def test_an_alert_is_raised_once_even_when_its_transaction_is_retried() -> None:
    calls = {"n": 0}

    def deliver(topic: str, value: bytes) -> Any:
        calls["n"] += 1
        return KafkaTimeoutError() if calls["n"] == 1 else None

    line = Line(Faults(deliver=deliver))
    state = await line.state()
    assert await line.publisher.publish(state, outcomes(range(3), decision="reject"))
    alerts = line.broker.committed_records("lineguard.alerts")
    assert len(alerts) == 1  # two rejects in a row: one alert, not one per attempt
