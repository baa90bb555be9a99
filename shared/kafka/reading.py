"""Reading a whole topic, from its beginning to the end it had when reading started.

For commands that take stock of a topic (the labels export, the announcement history, the shadow
report's feedback): a group-less consumer assigned every partition, so nothing is committed and no
service's group is disturbed. Records are yielded raw; callers decode them with the codec.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

from shared.errors import BrokerError
from shared.kafka.client import make_consumer, partition_counts
from shared.settings import Settings


async def read_topic(settings: Settings, name: str, timeout_s: float) -> AsyncGenerator[Any, None]:
    """Every record of topic ``name`` (logical name), from its beginning to the end it had when
    reading started; ``BrokerError`` when the topic is missing or reading takes over ``timeout_s``."""
    from aiokafka import TopicPartition

    topic = settings.topic(name)
    partitions = (await partition_counts(settings, [topic])).get(topic)
    if not partitions:
        raise BrokerError(f"no topic {topic}: run `lineguard topics ensure`")
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise BrokerError(f"reading {topic} to its end took longer than {timeout_s:.0f} s")
            batch = await consumer.getmany(*pending, timeout_ms=500, max_records=100)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield record
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
