"""The one aiokafka wrapper: producers, consumers and topic creation configured the Lineguard way.

Every service gets its Kafka clients here so that delivery guarantees and size limits are set in one
place: producers wait for all replicas and are idempotent (transactional when given an id),
consumers read committed data only and never auto-commit, and every client accepts the largest
message the codec allows. aiokafka is imported inside the functions to keep CLI start-up light.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from shared.errors import BrokerError, ConfigError
from shared.kafka.topics import TOPICS, partitions_for
from shared.limits import KAFKA_MAX_MESSAGE_BYTES
from shared.settings import Settings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]

# A consumer must be able to fetch one maximal record from every partition it owns.
_FETCH_MAX_BYTES = max(64 << 20, 2 * KAFKA_MAX_MESSAGE_BYTES)
_TOPIC_ALREADY_EXISTS = 36


def make_producer(
    settings: Settings, *, transactional_id: str | None = None, **overrides: Any
) -> AIOKafkaProducer:
    """An (unstarted) producer: ``acks=all``, idempotent, sized for the largest message.

    With ``transactional_id`` it is a transactional producer; a second producer started with the
    same id fences this one (its next send or commit raises ``ProducerFenced``). Compression is
    off: frames are already JPEG/PNG and the CPU is better spent scoring.
    """
    from aiokafka import AIOKafkaProducer

    config: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap,
        "client_id": "lineguard",
        "acks": "all",
        "enable_idempotence": True,
        "max_request_size": KAFKA_MAX_MESSAGE_BYTES,
        "request_timeout_ms": 30_000,
        "compression_type": None,
    }
    if transactional_id is not None:
        config["transactional_id"] = transactional_id
    config.update(overrides)
    return AIOKafkaProducer(**config)


def make_consumer(
    settings: Settings,
    *topics: str,
    group_id: str | None,
    isolation_level: str = "read_committed",
    **overrides: Any,
) -> AIOKafkaConsumer:
    """An (unstarted) consumer of full topic names (``settings.topic("frames")``).

    Reads committed data only by default, starts from the earliest offset when the group has none,
    and never auto-commits: offsets are committed explicitly or inside a producer's transaction.
    """
    from aiokafka import AIOKafkaConsumer

    config: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap,
        "client_id": "lineguard",
        "group_id": group_id,
        "isolation_level": isolation_level,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": KAFKA_MAX_MESSAGE_BYTES,
        "fetch_max_bytes": _FETCH_MAX_BYTES,
        "request_timeout_ms": 40_000,
    }
    config.update(overrides)
    return AIOKafkaConsumer(*topics, **config)


def make_admin(settings: Settings, **overrides: Any) -> AIOKafkaAdminClient:
    from aiokafka.admin import AIOKafkaAdminClient

    config: dict[str, Any] = {"bootstrap_servers": settings.bootstrap, "client_id": "lineguard-admin"}
    config.update(overrides)
    return AIOKafkaAdminClient(**config)


async def delete_topics(settings: Settings, topics: list[str]) -> None:
    admin = make_admin(settings)
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()


async def partition_counts(settings: Settings, topics: list[str]) -> dict[str, int]:
    """The partition count of each of ``topics`` that exists (a missing one is left out), for readers
    that assign partitions themselves instead of joining a group."""
    admin = make_admin(settings)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0 and t["partitions"]}


async def ensure_topics(
    settings: Settings, *, frames_partitions: int = 4, timeout_s: float = 30.0
) -> list[str]:
    """Create every topic in the table that does not exist yet; return all their full names.

    Idempotent and safe to race: a topic created meanwhile by someone else counts as ensured. An
    existing topic is left as it is (a different partition count is logged, never changed, because
    re-partitioning would move keys). Returns once every partition has a leader.
    """
    from aiokafka.admin import NewTopic
    from aiokafka.errors import for_code

    if frames_partitions < 1:
        raise ConfigError("frames_partitions must be at least 1")
    wanted = {settings.topic(spec.name): spec for spec in TOPICS}
    admin = make_admin(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name,
                num_partitions=partitions_for(spec, frames_partitions),
                replication_factor=1,
                topic_configs=dict(spec.config),
            )
            for name, spec in wanted.items()
            if name not in existing
        ]
        if missing:
            response = await admin.create_topics(missing, timeout_ms=int(timeout_s * 1000))
            for item in response.to_object()["topic_errors"]:
                code = item["error_code"]
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    message = item.get("error_message") or for_code(code).__name__
                    raise BrokerError(f"could not create topic {item['topic']}: {message}")
            log.info("created topics %s", ", ".join(t.name for t in missing))
        await _wait_for_leaders(admin, list(wanted), timeout_s)
        for name, spec in wanted.items():
            if name in existing:
                await _report_partition_mismatch(admin, name, partitions_for(spec, frames_partitions))
    finally:
        await admin.close()
    return list(wanted)


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topics: list[str], timeout_s: float) -> None:
    """Poll metadata until every partition of every topic has a leader."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = await admin.describe_topics(topics)
        pending = [
            t["topic"]
            for t in described
            if t["error_code"] != 0 or not t["partitions"] or any(p["leader"] < 0 for p in t["partitions"])
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"topics without leaders after {timeout_s}s: {', '.join(pending)}")
        await asyncio.sleep(0.1)


async def _report_partition_mismatch(admin: AIOKafkaAdminClient, topic: str, wanted: int) -> None:
    (described,) = await admin.describe_topics([topic])
    have = len(described["partitions"])
    if have != wanted:
        log.warning("topic %s has %d partitions, not %d; left unchanged", topic, have, wanted)


def header(headers: Iterable[tuple[str, bytes]] | None, name: str) -> bytes | None:
    """The last value of header ``name``, or None."""
    found = None
    for key, value in headers or ():
        if key == name:
            found = value
    return found


def with_header(headers: Sequence[tuple[str, bytes]] | None, name: str, value: bytes) -> Headers:
    """A copy of ``headers`` with ``name`` set to ``value`` (replacing earlier values)."""
    return [(k, v) for k, v in headers or () if k != name] + [(name, value)]
