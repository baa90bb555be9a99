"""Every Kafka client in the tree is made by the one wrapper, so none can miss the security settings."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
# Constructing a client (or a raw connection) anywhere but here would bypass settings.kafka.
ALLOWED = {
    Path("shared/kafka/client.py"),
    Path("shared/kafka/security.py"),
    Path("shared/kafka/secure_broker.py"),
}
CONSTRUCTION = re.compile(
    r"\b(AIOKafkaProducer|AIOKafkaConsumer|AIOKafkaAdminClient|AIOKafkaClient|create_conn)\s*\("
)


def test_no_kafka_client_is_built_outside_the_wrapper() -> None:
    offenders = []
    for folder in ("shared", "services", "tests", "benchmarks", "deploy"):
        for path in (ROOT / folder).rglob("*.py"):
            relative = path.relative_to(ROOT)
            if relative in ALLOWED or relative == Path(__file__).relative_to(ROOT):
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if CONSTRUCTION.search(line):
                    offenders.append(f"{relative}:{number}: {line.strip()}")
    assert offenders == [], "use shared.kafka.client.make_producer/make_consumer/make_admin:\n" + "\n".join(
        offenders
    )


def test_the_check_would_see_one() -> None:
    assert CONSTRUCTION.search("    producer = AIOKafkaProducer(bootstrap_servers=x)")
    assert not CONSTRUCTION.search("    producer: AIOKafkaProducer = make_producer(settings)")
