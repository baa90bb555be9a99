"""A local Kafka cluster of several KRaft nodes (each broker and controller in one JVM), from the same
jars as the single ``LocalBroker``: ``lineguard kafka up --brokers 3``, the chaos tests and benchmarks.

Every node is a ``ClusterNode`` in ``DATA_DIR/node-N`` with its own client and controller port; they
share one cluster id and one static voter set, so any two of three form a quorum. The internal
topics (consumer offsets, transaction state) get ``replication`` replicas and a write needs
``min_insync`` of them: with three nodes and two in sync, one node may die (SIGKILL included) and
the line, its transactions and its committed offsets go on. Topics made by ``ensure_topics`` take
the same numbers from ``settings.kafka.replication_factor``/``min_insync_replicas``
(``KafkaCluster.kafka_settings`` sets them).

Ports: node N (1-based) listens for clients on ``port + 2(N-1)`` and for its controller on
``controller_port + 2(N-1)`` (defaults 9092/9093, 9094/9095, 9096/9097), or on the ports given.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shared.errors import BrokerError
from shared.kafka.broker import BrokerStatus, LocalBroker, _new_cluster_id, free_ports
from shared.settings import BrokerSettings, KafkaSettings

MAX_NODES = 9


class ClusterNode(LocalBroker):
    """One node of a ``KafkaCluster``: a ``LocalBroker`` with its node id, that reads the cluster's
    voters, cluster id and replication for internal topics from the cluster."""

    def __init__(self, cluster: KafkaCluster, node_id: int, settings: BrokerSettings) -> None:
        super().__init__(settings)
        self.cluster = cluster
        self.node_id = node_id

    def _node_properties(self) -> dict[str, str]:
        return {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.cluster.voters,
        }

    def _storage_properties(self) -> dict[str, str]:
        replicas, in_sync = str(self.cluster.replication), str(self.cluster.min_insync)
        return {
            **super()._storage_properties(),
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": in_sync,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": in_sync,
            # Topics made by anything else than `topics ensure` are as durable as the internal ones.
            "default.replication.factor": replicas,
            "min.insync.replicas": in_sync,
            "unclean.leader.election.enable": "false",  # never elect a replica that lacks writes
        }

    def _cluster_id(self) -> str:
        return self.cluster.cluster_id_file.read_text().strip()


class KafkaCluster:
    """``nodes`` KRaft nodes in ``data_dir/node-N``; ``start`` formats (first time) and starts them
    all, then waits until each answers. The node's ``pid`` is its process group: ``kill(node)``
    SIGKILLs it, ``start_node(node)`` brings it back on the same storage."""

    def __init__(
        self,
        data_dir: Path,
        libs_dir: Path,
        *,
        nodes: int = 3,
        ports: Sequence[tuple[int, int]] | None = None,
        heap: str = "384m",
        min_insync: int | None = None,
        start_timeout_s: float = 120.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise BrokerError(f"a local cluster has 1 to {MAX_NODES} nodes, not {nodes}")
        if ports is None:
            chosen = free_ports(2 * nodes)  # distinct: held open together while choosing
            ports = list(zip(chosen[::2], chosen[1::2], strict=True))
        ports = list(ports)
        if len(ports) != nodes:
            raise BrokerError(f"{nodes} nodes need {nodes} port pairs, got {len(ports)}")
        if any(not 1 <= port <= 65535 for pair in ports for port in pair):
            raise BrokerError(f"ports must be 1 to 65535: {ports}")
        self.data_dir = Path(data_dir).resolve()
        self.replication = nodes
        self.min_insync = min_insync if min_insync is not None else max(1, nodes - 1)
        self.voters = ",".join(f"{n}@localhost:{controller}" for n, (_, controller) in enumerate(ports, 1))
        # What every node's settings share; each node has its own ports and data folder.
        shared = BrokerSettings(
            libs_dir=libs_dir, heap=heap, start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s
        )
        self.nodes: list[ClusterNode] = []
        for n, (client, controller) in enumerate(ports, 1):
            own = {"port": client, "controller_port": controller, "data_dir": self.data_dir / f"node-{n}"}
            self.nodes.append(ClusterNode(self, n, shared.model_copy(update=own)))

    @classmethod
    def from_settings(cls, settings: BrokerSettings, nodes: int) -> KafkaCluster:
        """The cluster ``lineguard kafka up --brokers N`` runs: ports counted up from the settings'."""
        ports = [(settings.port + 2 * i, settings.controller_port + 2 * i) for i in range(nodes)]
        if settings.secure:
            raise BrokerError("the local cluster is plaintext only; --secure runs a single broker")
        return cls(
            settings.data_dir,
            settings.libs_dir,
            nodes=nodes,
            ports=ports,
            heap=settings.heap,
            start_timeout_s=settings.start_timeout_s,
            stop_timeout_s=settings.stop_timeout_s,
        )

    @property
    def cluster_id_file(self) -> Path:
        return self.data_dir / "cluster.id"

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def kafka_settings(self, kafka: KafkaSettings | None = None) -> KafkaSettings:
        """``kafka`` (default: plaintext) with this cluster's replication for the topics it makes."""
        base = kafka if kafka is not None else KafkaSettings()
        return base.model_copy(
            update={"replication_factor": self.replication, "min_insync_replicas": self.min_insync}
        )

    def start(self) -> list[BrokerStatus]:
        """Start every node that is not running, then wait until all answer."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.cluster_id_file.exists():
            self.cluster_id_file.write_text(_new_cluster_id() + "\n")
        try:
            for node in self.nodes:
                node.start(wait=False)
            return [node.wait_ready() for node in self.nodes]
        except BaseException:
            self.stop()
            raise

    def stop(self) -> bool:
        """Stop every node at once (SIGTERM, then SIGKILL after its timeout). True if any was running."""
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            return any(pool.map(lambda node: node.stop(), self.nodes))

    def status(self) -> list[BrokerStatus]:
        return [node.status() for node in self.nodes]

    def node(self, node_id: int) -> ClusterNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise BrokerError(f"no node {node_id} in this cluster")

    def kill(self, node_id: int) -> int:
        """SIGKILL one node (its whole process group): no flush, no controlled shutdown. Its pid."""
        node = self.node(node_id)
        pid = node.status().pid
        if pid is None:
            raise BrokerError(f"node {node_id} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        node.stop(timeout_s=10.0)  # reaps it and removes its pid file
        return pid

    def start_node(self, node_id: int) -> BrokerStatus:
        """Start one node again on its storage and wait until it answers."""
        return self.node(node_id).start()
