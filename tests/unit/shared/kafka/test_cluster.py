"""The local KRaft cluster's configuration (no JVM): one voter set and cluster id for all nodes, each
node its own id, ports and storage, internal topics replicated like the line's topics."""

from pathlib import Path

import pytest

from shared.errors import BrokerError
from shared.kafka.cluster import KafkaCluster
from shared.settings import BrokerSettings


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_three_nodes_share_voters_and_replicate_internal_topics_three_times(tmp_path: Path) -> None:
    cluster = KafkaCluster(tmp_path, tmp_path / "libs", ports=[(9100, 9101), (9102, 9103), (9104, 9105)])
    props = [_properties(node.server_properties()) for node in cluster.nodes]
    voters = "1@localhost:9101,2@localhost:9103,3@localhost:9105"
    assert [p["node.id"] for p in props] == ["1", "2", "3"]
    assert {p["controller.quorum.voters"] for p in props} == {voters}
    assert [p["listeners"] for p in props] == [
        f"PLAINTEXT://localhost:{c},CONTROLLER://localhost:{k}"
        for c, k in [(9100, 9101), (9102, 9103), (9104, 9105)]
    ]
    assert len({p["log.dirs"] for p in props}) == 3
    for p in props:
        assert p["offsets.topic.replication.factor"] == "3"
        assert p["transaction.state.log.replication.factor"] == "3"
        assert p["transaction.state.log.min.isr"] == "2"
        assert p["min.insync.replicas"] == "2" and p["unclean.leader.election.enable"] == "false"
    assert cluster.bootstrap == "localhost:9100,localhost:9102,localhost:9104"
    kafka = cluster.kafka_settings()
    assert (kafka.replication_factor, kafka.min_insync_replicas) == (3, 2)


def test_nodes_format_their_storage_with_the_one_cluster_id(tmp_path: Path) -> None:
    cluster = KafkaCluster(tmp_path, tmp_path / "libs", nodes=3)
    cluster.cluster_id_file.write_text("AQEBAQEBAQEBAQEBAQEBAQ\n")
    assert {node._cluster_id() for node in cluster.nodes} == {"AQEBAQEBAQEBAQEBAQEBAQ"}


def test_kafka_up_brokers_counts_ports_up_from_the_settings(tmp_path: Path) -> None:
    settings = BrokerSettings(port=9092, controller_port=9093, data_dir=tmp_path)
    cluster = KafkaCluster.from_settings(settings, 3)
    assert [(n.settings.port, n.settings.controller_port) for n in cluster.nodes] == [
        (9092, 9093),
        (9094, 9095),
        (9096, 9097),
    ]
    assert [n.data_dir for n in cluster.nodes] == [tmp_path.resolve() / f"node-{i}" for i in (1, 2, 3)]
    with pytest.raises(BrokerError, match="plaintext only"):
        KafkaCluster.from_settings(settings.model_copy(update={"secure": True}), 3)
