"""The one aiokafka wrapper: producers, consumers and topic creation configured the Lineguard way.

Every service gets its Kafka clients here so that delivery guarantees, size limits and security are
set in one place: producers wait for all replicas and are idempotent (transactional when given an
id), consumers read committed data only and never auto-commit, every client accepts the largest
message the codec allows, and every client speaks the protocol of ``settings.kafka`` (TLS, SASL;
``shared.kafka.security``). A client that cannot start because the cluster is unreachable or refuses
it raises ``KafkaAccessError`` saying why. aiokafka is imported inside the functions to keep CLI
start-up light.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from shared.errors import BrokerError, ConfigError
from shared.kafka.security import access_error, client_security
from shared.kafka.topics import TOPICS, partitions_for
from shared.limits import KAFKA_MAX_MESSAGE_BYTES
from shared.settings import Settings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
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
    config: dict[str, Any] = {
        **_connection(settings),
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
    return _clients().producer(settings, **config)


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
    config: dict[str, Any] = {
        **_connection(settings),
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
    return _clients().consumer(settings, *topics, **config)


def make_admin(settings: Settings, **overrides: Any) -> AIOKafkaAdminClient:
    config: dict[str, Any] = {**_connection(settings), "client_id": "lineguard-admin"}
    config.update(overrides)
    return _clients().admin(settings, **config)


def make_protocol_client(settings: Settings, **overrides: Any) -> AIOKafkaClient:
    """A bare (unstarted) aiokafka client for requests the admin client lacks (ACLs, SCRAM
    credentials: ``shared.kafka.acl``); ``await client.bootstrap()`` starts it."""
    config: dict[str, Any] = {**_connection(settings), "client_id": "lineguard-admin"}
    config.update(overrides)
    return _clients().protocol(settings, **config)


def _connection(settings: Settings) -> dict[str, Any]:
    """Where and how every client connects: the bootstrap servers and ``settings.kafka``'s security."""
    return {"bootstrap_servers": settings.bootstrap, **client_security(settings)}


class _Clients:
    """aiokafka's client classes, each with a start that explains a refused connection."""

    def __init__(self) -> None:
        from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient

        self._classes: dict[str, type] = {
            "producer": _explaining(AIOKafkaProducer, "start", "stop"),
            "consumer": _explaining(AIOKafkaConsumer, "start", "stop"),
            "admin": _explaining(AIOKafkaAdminClient, "start", "close"),
            "protocol": _explaining(AIOKafkaClient, "bootstrap", "close"),
        }

    def _make(self, kind: str, settings: Settings, *args: Any, **config: Any) -> Any:
        client = self._classes[kind](*args, **config)
        client.lineguard_settings = settings
        return client

    def producer(self, settings: Settings, **config: Any) -> Any:
        return self._make("producer", settings, **config)

    def consumer(self, settings: Settings, *topics: str, **config: Any) -> Any:
        return self._make("consumer", settings, *topics, **config)

    def admin(self, settings: Settings, **config: Any) -> Any:
        return self._make("admin", settings, **config)

    def protocol(self, settings: Settings, **config: Any) -> Any:
        return self._make("protocol", settings, **config)


def _explaining(base: type, start: str, stop: str) -> type:
    """A subclass of the aiokafka client class ``base`` whose ``start`` method (named so in ``base``)
    explains a refused connection, closing the half-open client with its ``stop`` method first.
    The client's ``lineguard_settings`` (set by ``_Clients._make``) say what it tried to reach."""

    async def explained_start(self: Any) -> None:
        base_start = getattr(super(client, self), start)
        await _start_or_explain(self.lineguard_settings, base_start, getattr(self, stop))

    client = type(base.__name__, (base,), {start: explained_start})
    return client


async def _start_or_explain(
    settings: Settings, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    from aiokafka.errors import KafkaConnectionError

    try:
        await start()
    except KafkaConnectionError as exc:
        # aiokafka leaves a client whose start failed half-open; close it before saying why.
        try:
            await stop()
        except Exception as stop_exc:  # the explanation below matters more than this
            log.debug("closing a client that failed to start: %s", type(stop_exc).__name__)
        raise await access_error(settings, exc) from exc


@functools.cache
def _clients() -> _Clients:
    return _Clients()


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
    re-partitioning would move keys). New topics get ``settings.kafka.replication_factor`` replicas
    and ``min.insync.replicas`` (with ``acks=all``, a write succeeds only once that many replicas
    have it). Returns once every partition has a leader.
    """
    from aiokafka.admin import NewTopic
    from aiokafka.errors import TopicAuthorizationFailedError, for_code

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
                replication_factor=settings.kafka.replication_factor,
                topic_configs={**spec.config, "min.insync.replicas": str(settings.kafka.min_insync_replicas)},
            )
            for name, spec in wanted.items()
            if name not in existing
        ]
        if missing:
            response = await admin.create_topics(missing, timeout_ms=int(timeout_s * 1000))
            for item in response.to_object()["topic_errors"]:
                code = item["error_code"]
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    error = for_code(code)
                    message = item.get("error_message") or error.__name__
                    reason = "not_authorized" if error is TopicAuthorizationFailedError else None
                    raise BrokerError(f"could not create topic {item['topic']}: {message}", reason=reason)
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
