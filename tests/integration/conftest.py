"""Integration test harness: one real Kafka broker for the whole test session.

If ``LINEGUARD_KAFKA_BOOTSTRAP`` is set, that broker is used (it must be reachable). Otherwise the
harness starts its own single-node KRaft broker (``tests.support.broker``) from the jars of
``make kafka-jars``, on free ports with a temporary data directory, and stops it at the end.
A missing jar directory fails the tests rather than skipping them: these tests never pass without
a real broker. The helpers these tests share (topic readers, service runners, message builders,
the line's models) are in ``tests/support``.

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
    ``client_settings(principal)`` and ``layout.env_file(principal)`` act as one principal;
    ``authorize(settings)`` opens it to another topic prefix and its group ids.
``line_models`` (session)
    Two small real models of the line's synthetic products (``tests.support.line.LineModels``),
    fitted once per session, when a test first asks for them.

Every test in ``tests/integration`` is marked ``integration`` automatically.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from shared.kafka.broker import LocalBroker
from shared.kafka.client import delete_topics, ensure_topics
from shared.kafka.secure_broker import SecureLocalBroker
from shared.settings import Settings
from tests.support.broker import external_bootstrap, secure_throwaway_broker, throwaway_broker
from tests.support.line import LineModels, fit_line_models

T = TypeVar("T")

TEST_FRAMES_PARTITIONS = 2
_SESSION_TOKEN = uuid.uuid4().hex[:8]
_COUNTER = itertools.count()
_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def _run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a private loop in another thread.

    Sync fixtures use this so they neither need nor disturb pytest-asyncio's event loops.
    """

    async def main() -> T:
        return await factory()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


@pytest.fixture(scope="session")
def local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker | None]:
    if external_bootstrap() is not None:
        yield None
        return
    with throwaway_broker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureLocalBroker]:
    data_dir = tmp_path_factory.mktemp("kafka-secure")
    with secure_throwaway_broker(data_dir, f"s{_SESSION_TOKEN}", TEST_FRAMES_PARTITIONS) as broker:
        yield broker


@pytest.fixture(scope="session")
def kafka_bootstrap(local_broker: LocalBroker | None) -> str:
    bootstrap = local_broker.bootstrap if local_broker is not None else external_bootstrap()
    assert bootstrap is not None
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
        topics = _run_async(lambda: ensure_topics(settings, frames_partitions=frames_partitions))
        created.append((settings, topics))
        return settings

    yield make
    for settings, topics in created:
        # Cleanup keeps a long session's broker small; a failure here must not fail the test.
        with contextlib.suppress(Exception):
            _run_async(lambda s=settings, t=topics: delete_topics(s, t))  # type: ignore[misc]


@pytest.fixture
def kafka_settings(make_kafka_settings: Callable[..., Settings]) -> Settings:
    return make_kafka_settings()


@pytest.fixture(scope="session")
def line_models(tmp_path_factory: pytest.TempPathFactory) -> LineModels:
    return fit_line_models(tmp_path_factory.mktemp("line-models"))
