"""A Kafka broker for tests and benchmarks: the one named by ``LINEGUARD_KAFKA_BOOTSTRAP``, or a
throw-away single-node KRaft broker (``LocalBroker.on_free_ports``) on free ports in a folder of
the caller's, from the jars of ``make kafka-jars``, stopped when the caller is done.

Neither tests nor benchmarks ever pass without a real broker: missing jars or a named broker that
does not answer are errors that say what to do, never a skip.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from shared.errors import BrokerError
from shared.kafka.broker import LocalBroker, api_versions_ok, with_free_ports
from shared.kafka.cluster import KafkaCluster
from shared.kafka.secure_broker import SecureLocalBroker
from shared.settings import BrokerSettings, Settings

BOOTSTRAP_VARIABLE = "LINEGUARD_KAFKA_BOOTSTRAP"


def external_bootstrap() -> str | None:
    """``LINEGUARD_KAFKA_BOOTSTRAP`` when it is set (checked to answer as a Kafka broker), else None."""
    bootstrap = os.environ.get(BOOTSTRAP_VARIABLE)
    if not bootstrap:
        return None
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if not api_versions_ok(host or "localhost", int(port)):
        raise BrokerError(f"{BOOTSTRAP_VARIABLE}={bootstrap} does not answer as a Kafka broker")
    return bootstrap


@contextlib.contextmanager
def throwaway_broker(data_dir: Path, heap: str = "512m") -> Iterator[LocalBroker]:
    """A broker of its own in ``data_dir``, on free ports, stopped on exit. The jars are read from
    ``LINEGUARD_BROKER__LIBS_DIR`` or the default ``.cache/kafka/libs`` (run from the repository root)."""
    libs_dir = Path(os.environ.get("LINEGUARD_BROKER__LIBS_DIR", BrokerSettings().libs_dir))
    broker = LocalBroker.on_free_ports(data_dir, libs_dir, heap=heap)
    broker.start()  # no jars: a BrokerError that says to run `make kafka-jars`
    try:
        yield broker
    finally:
        broker.stop()


@contextlib.contextmanager
def throwaway_cluster(data_dir: Path, nodes: int = 3, heap: str = "384m") -> Iterator[KafkaCluster]:
    """A local KRaft cluster of ``nodes`` in ``data_dir`` on free ports (``lineguard kafka up --brokers``'s),
    internal topics with ``nodes`` replicas and ``nodes - 1`` in sync; every node stopped on exit."""
    libs_dir = Path(os.environ.get("LINEGUARD_BROKER__LIBS_DIR", BrokerSettings().libs_dir))
    # Throw-away: a node that does not stop within 10 s of SIGTERM is killed.
    cluster = KafkaCluster(data_dir, libs_dir, nodes=nodes, heap=heap, stop_timeout_s=10.0)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def kafka_bootstrap(data_dir: Path) -> Iterator[str]:
    """``host:port`` of a broker to use: the named one, else a throw-away one in ``data_dir``."""
    named = external_bootstrap()
    if named is not None:
        yield named
        return
    with throwaway_broker(data_dir) as broker:
        yield broker.bootstrap


@contextlib.contextmanager
def secure_throwaway_broker(
    data_dir: Path, topic_prefix: str, frames_partitions: int = 2
) -> Iterator[SecureLocalBroker]:
    """``lineguard kafka up --secure``'s broker of its own in ``data_dir/secure``, on free ports: SASL_SSL,
    a SCRAM user per principal, the ACLs and the topics for ``topic_prefix``; stopped on exit."""
    libs_dir = Path(os.environ.get("LINEGUARD_BROKER__LIBS_DIR", BrokerSettings().libs_dir))
    broker_settings = with_free_ports(BrokerSettings(data_dir=data_dir, libs_dir=libs_dir))
    broker = SecureLocalBroker(Settings(broker=broker_settings, topic_prefix=topic_prefix))
    try:
        broker.start()
        broker.authorize(broker.settings, frames_partitions)
        yield broker
    finally:
        broker.stop()
