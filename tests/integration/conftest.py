"""Integration test harness: one real Kafka broker for the whole test session.

If ``LINEGUARD_KAFKA_BOOTSTRAP`` is set, that broker is used (it must be reachable). Otherwise the
harness starts its own single-node KRaft broker (``shared.kafka.broker.LocalBroker``) from the jars
of ``make kafka-jars``, on free ports with a temporary data directory, and stops it at the end.
A missing jar directory fails the tests rather than skipping them: these tests never pass without
a real broker.

Fixtures (stable names; every service's integration tests use them):

``kafka_bootstrap`` (session)
    ``"host:port"`` of the broker.
``kafka_settings`` (function)
    A ``Settings`` with ``kafka_bootstrap`` set and a topic prefix unique to the test, whose topics
    (all of ``shared.kafka.topics.TOPICS``, frames with 2 partitions) already exist. Tests therefore
    never see each other's messages. Adjust other sections with
    ``kafka_settings.model_copy(update={...})``. The topics are deleted after the test.
``make_kafka_settings`` (function)
    Factory for more of the same: ``make_kafka_settings(frames_partitions=4)`` returns a fresh
    ``Settings`` with its own unique prefix and ensured topics (also deleted after the test).
``local_broker`` (session)
    The ``LocalBroker`` the harness started, or ``None`` when an external broker is used.
``secure_kafka`` (session)
    A second broker, started on first use: ``SecureLocalBroker`` (SASL_SSL, one SCRAM user per
    principal, ACLs) with its topics (frames with 2 partitions) made by ``admin``. Its
    ``client_settings(principal)`` and ``layout.env_file(principal)`` act as one principal.

Every test in ``tests/integration`` is marked ``integration`` automatically.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from shared.kafka.broker import LocalBroker, api_versions_ok, free_ports_settings
from shared.kafka.client import delete_topics, ensure_topics, make_consumer
from shared.kafka.secure_broker import SecureLocalBroker
from shared.messages.codec import decode
from shared.messages.schemas import DeadLetter
from shared.settings import BrokerSettings, Settings

T = TypeVar("T")

TEST_FRAMES_PARTITIONS = 2
_SESSION_TOKEN = uuid.uuid4().hex[:8]
_COUNTER = itertools.count()
_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a private loop in another thread.

    Sync fixtures use this so they neither need nor disturb pytest-asyncio's event loops.
    """

    async def main() -> T:
        return await factory()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


async def read_dead_letters(settings: Settings, count: int, timeout_s: float = 15.0) -> list[DeadLetter]:
    """Up to ``count`` dead letters from the start of the ``dlq`` topic, waiting at most ``timeout_s``."""
    consumer = make_consumer(settings, settings.topic("dlq"), group_id=None)
    await consumer.start()
    try:
        out: list[DeadLetter] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                out += [decode(r.value, DeadLetter) for r in records]
        return out
    finally:
        await consumer.stop()


def _libs_dir() -> Path:
    libs_dir = Path(os.environ.get("LINEGUARD_BROKER__LIBS_DIR", BrokerSettings().libs_dir))
    if not any(libs_dir.glob("kafka_2.13-*.jar")):
        pytest.fail(
            f"no Kafka jars in {libs_dir.resolve()}: run `make kafka-jars` (integration tests need a broker)"
        )
    return libs_dir


@pytest.fixture(scope="session")
def local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker | None]:
    if os.environ.get("LINEGUARD_KAFKA_BOOTSTRAP"):
        yield None
        return
    broker = LocalBroker.on_free_ports(tmp_path_factory.mktemp("kafka"), _libs_dir())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureLocalBroker]:
    broker_settings = free_ports_settings(tmp_path_factory.mktemp("kafka-secure"), _libs_dir())
    settings = Settings(broker=broker_settings, topic_prefix=f"s{_SESSION_TOKEN}")
    broker = SecureLocalBroker(settings)
    broker.start()
    try:
        admin = broker.client_settings("admin")
        run_async(lambda: ensure_topics(admin, frames_partitions=TEST_FRAMES_PARTITIONS))
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(local_broker: LocalBroker | None) -> str:
    if local_broker is not None:
        return local_broker.bootstrap
    bootstrap = os.environ["LINEGUARD_KAFKA_BOOTSTRAP"]
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if not api_versions_ok(host or "localhost", int(port)):
        pytest.fail(f"LINEGUARD_KAFKA_BOOTSTRAP={bootstrap} does not answer as a Kafka broker")
    return bootstrap


def _unique_prefix(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:40].strip("-")
    return f"t{_SESSION_TOKEN}-{next(_COUNTER)}-{name}"


@pytest.fixture
def make_kafka_settings(
    kafka_bootstrap: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Settings]]:
    created: list[tuple[Settings, list[str]]] = []

    def make(frames_partitions: int = TEST_FRAMES_PARTITIONS, **fields: Any) -> Settings:
        settings = Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=_unique_prefix(request), **fields)
        topics = run_async(lambda: ensure_topics(settings, frames_partitions=frames_partitions))
        created.append((settings, topics))
        return settings

    yield make
    for settings, topics in created:
        # Cleanup keeps a long session's broker small; a failure here must not fail the test.
        with contextlib.suppress(Exception):
            run_async(lambda s=settings, t=topics: delete_topics(s, t))  # type: ignore[misc]


@pytest.fixture
def kafka_settings(make_kafka_settings: Callable[..., Settings]) -> Settings:
    return make_kafka_settings()
