"""The model loop's principals on the real secure broker (SASL_SSL, SCRAM, ACLs): the operator
announces with its history in one transaction and reads both back; a shadow run reads frames in its
own group and writes shadow-verdicts, nothing the line acts on; refit proposals only read."""

from __future__ import annotations

import time

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
)

from services.scorer.history import history_entry, newest_announcement, publish_announcement, read_history
from shared.kafka.client import make_consumer, make_producer
from shared.kafka.secure_broker import SecureLocalBroker
from tests.support.messages import announcement

pytestmark = pytest.mark.integration


async def test_the_operator_announces_with_its_history_in_one_transaction(
    secure_kafka: SecureLocalBroker,
) -> None:
    operator = secure_kafka.client_settings("operator")
    version = f"loop-{time.time_ns()}"
    sent = announcement(version, announced_at=time.time_ns())
    entry = history_entry(sent, action="promote", reason="agreement 0.99 on 600 frames")
    await publish_announcement(operator, sent, entry)
    newest, history = await newest_announcement(operator)
    assert newest == sent and history[-1] == entry
    # The console and refit proposals read the history; neither can write it.
    console, refits = (secure_kafka.client_settings(name) for name in ("console", "refit-check"))
    assert (await read_history(console))[-1] == (await read_history(refits))[-1] == entry
    producer = make_producer(console)
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError, match=console.topic("model-history")):
            await producer.send_and_wait(console.topic("model-history"), b"{}", key=b"forged")
    finally:
        await producer.stop()
    producer = make_producer(refits)  # it may write no topic at all: not even a producer id
    with pytest.raises(ClusterAuthorizationFailedError):
        await producer.start()
    await producer.stop()
    assert (await read_history(operator))[-1] == entry  # nothing refused was written


async def test_a_shadow_run_reads_frames_in_its_own_group_and_writes_only_shadow_verdicts(
    secure_kafka: SecureLocalBroker,
) -> None:
    shadow = secure_kafka.client_settings("shadow")
    producer = make_producer(shadow)
    await producer.start()
    try:
        await producer.send_and_wait(shadow.topic("shadow-verdicts"), b"{}", key=b"station-1")
        for topic in ("verdicts", "models", "model-history"):
            with pytest.raises(TopicAuthorizationFailedError, match=shadow.topic(topic)):
                await producer.send_and_wait(shadow.topic(topic), b"{}", key=b"station-1")
    finally:
        await producer.stop()
    tp = TopicPartition(shadow.topic("frames"), 0)
    async with make_consumer(shadow, group_id=shadow.shadow.group_id) as own:
        own.assign([tp])
        await own.seek_to_end(tp)
        await own.commit({tp: await own.position(tp)})  # its own group's offsets: allowed
    async with make_consumer(shadow, group_id=shadow.scorer.group_id) as scorers:
        scorers.assign([tp])
        with pytest.raises(GroupAuthorizationFailedError):
            await scorers.commit({tp: 0})  # the serving scorer's group: never
