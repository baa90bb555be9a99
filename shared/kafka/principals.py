"""Who may do what on the cluster: one principal per service, each with the least it needs.

The table follows what each service's code does with Kafka (read ``services/<name>/service.py``):

- ``camera``: writes ``frames`` (``lineguard camera-sim``, or a camera of your own).
- ``camera-gateway``: writes ``frames`` and its ``camera-ledger`` (which file or stream position each
  camera last sent) in transactions under its transactional ids, and reads the ledger back at start
  (no group). Trigger topics a plant chooses in the gateway's camera file are its own: grant them.
- ``scorer``: reads ``frames`` in its group and ``models`` (no group); writes ``verdicts``,
  ``defects``, ``dlq`` and ``alerts`` in transactions whose ids start with its transactional-id
  prefix, committing the ``frames`` offsets in the same transactions.
- ``explainer``: reads ``defects`` in its group, writes ``reports`` and dead letters to ``dlq``; after
  a crash it reads ``reports`` back (no group) to find what it already published.
- ``plc-bridge``: reads ``verdicts`` in its group, dead-letters undecodable ones to ``dlq``, and
  watches the scorer: its group's members and committed offsets (DESCRIBE on the group) against
  the ``frames`` partitions' offsets (DESCRIBE on ``frames``: offsets only, never a frame).
- ``alerts``: reads ``alerts`` in its group, dead-letters what it cannot deliver to ``dlq``.
- ``operator``: announces models (``lineguard announce``, ``promote``, ``rollback``: ``models`` and
  ``model-history`` in one transaction under the promotion's transactional-id prefix, after reading
  both back, no group) and exports labelled data to fit them (``lineguard labels export`` reads
  ``feedback``, ``defects``, ``verdicts`` and ``frames``, no group).
- ``shadow``: a candidate model's shadow run (``lineguard shadow``) reads ``frames`` in its own group
  (never the scorer's), ``verdicts`` and ``feedback`` (no group), and writes ``shadow-verdicts``.
- ``refit-check``: refit proposals (``lineguard loop check``) read ``feedback``, ``models`` and
  ``model-history`` (no group); it writes nothing.
- ``console``: the operator console reads ``verdicts``, ``defects``, ``reports``, ``models``,
  ``model-history`` and ``feedback`` (no group) and writes the operators' ``feedback``.
- ``admin``: creates, configures and deletes the topics (``lineguard topics ensure``), describes
  every group (lag), and manages ACLs and SCRAM credentials (``ALTER`` on the cluster).

Nobody but the scorer writes ``verdicts``; nobody but the operator writes ``models``.

Kafka's implications keep the table short: ``READ``/``WRITE`` on a topic also allow ``DESCRIBE``;
``READ`` on a group allows joining it and committing offsets (also inside a transaction); ``WRITE``
on a transactional id allows using it; an idempotent producer needs no ``IDEMPOTENT_WRITE`` on the
cluster when it may ``WRITE`` some topic (Kafka 3.0+, KIP-679). Topic grants are literal names
(with the topic prefix), so a principal of one prefix cannot touch another's topics.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from shared.settings import Settings


class Resource(IntEnum):
    """Kafka's ACL resource types (wire codes)."""

    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7


class Pattern(IntEnum):
    """How an ACL's resource name matches (wire codes)."""

    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    """Kafka's ACL operations (wire codes)."""

    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12
    CREATE_TOKENS = 13
    DESCRIBE_TOKENS = 14


CLUSTER_NAME = "kafka-cluster"  # the one cluster resource's name
ANY_HOST = "*"


@dataclass(frozen=True)
class Grant:
    """One ALLOW rule: ``operation`` on the resource ``(resource, name, pattern)``."""

    resource: Resource
    name: str
    pattern: Pattern
    operation: Operation

    def describe(self) -> str:
        star = "*" if self.pattern is Pattern.PREFIXED else ""
        return f"{self.operation.name} {self.resource.name.lower()} {self.name}{star}"


@dataclass(frozen=True)
class Principal:
    name: str  # the SASL username; the ACL principal is "User:<name>"
    role: str
    grants: tuple[Grant, ...]

    @property
    def acl_principal(self) -> str:
        return f"User:{self.name}"


def _topics(settings: Settings, operation: Operation, *names: str) -> list[Grant]:
    return [Grant(Resource.TOPIC, settings.topic(n), Pattern.LITERAL, operation) for n in names]


def _group(name: str, operation: Operation = Operation.READ, pattern: Pattern = Pattern.LITERAL) -> Grant:
    return Grant(Resource.GROUP, name, pattern, operation)


def principals(settings: Settings) -> tuple[Principal, ...]:
    """Every Lineguard principal with its grants, for the topic prefix, group ids and transactional-id
    prefix in ``settings`` (change one of those, re-apply the ACLs)."""
    read, write = Operation.READ, Operation.WRITE
    scorer_txn = Grant(
        Resource.TRANSACTIONAL_ID, f"{settings.scorer.transactional_id_prefix}-", Pattern.PREFIXED, write
    )
    topic_prefix = f"{settings.topic_prefix}."
    admin_topics = [
        Grant(Resource.TOPIC, topic_prefix, Pattern.PREFIXED, op)
        for op in (
            Operation.CREATE,
            Operation.DELETE,
            Operation.DESCRIBE,
            Operation.DESCRIBE_CONFIGS,
            Operation.ALTER_CONFIGS,
        )
    ]
    admin_cluster = [
        Grant(Resource.CLUSTER, CLUSTER_NAME, Pattern.LITERAL, op)
        for op in (Operation.DESCRIBE, Operation.ALTER, Operation.DESCRIBE_CONFIGS)
    ]
    announce_txn = Grant(
        Resource.TRANSACTIONAL_ID, f"{settings.promotion.transactional_id_prefix}-", Pattern.PREFIXED, write
    )
    gateway = settings.camera_gateway.transactional_id
    gateway_txn = (
        Grant(Resource.TRANSACTIONAL_ID, gateway, Pattern.LITERAL, write)
        if gateway
        else Grant(Resource.TRANSACTIONAL_ID, "lineguard-camera-gateway-", Pattern.PREFIXED, write)
    )
    return (
        Principal("camera", "publishes camera frames", tuple(_topics(settings, write, "frames"))),
        Principal(
            "camera-gateway",
            "publishes real cameras' frames exactly once, with its ledger",
            (
                *_topics(settings, write, "frames", "camera-ledger"),
                *_topics(settings, read, "camera-ledger"),
                gateway_txn,
            ),
        ),
        Principal(
            "scorer",
            "scores frames; publishes verdicts, defect events, dead letters and alerts exactly once",
            (
                *_topics(settings, read, "frames", "models"),
                *_topics(settings, write, "verdicts", "defects", "dlq", "alerts"),
                _group(settings.scorer.group_id),
                scorer_txn,
            ),
        ),
        Principal(
            "explainer",
            "turns defect events into reports",
            (
                *_topics(settings, read, "defects", "reports"),
                *_topics(settings, write, "reports", "dlq"),
                _group(settings.explainer.group_id),
            ),
        ),
        Principal(
            "plc-bridge",
            "drives the PLC from verdicts; watches the scorer group's liveness",
            (
                *_topics(settings, read, "verdicts"),
                *_topics(settings, write, "dlq"),
                *_topics(settings, Operation.DESCRIBE, "frames"),
                _group(settings.plc_bridge.group_id),
                _group(settings.scorer.group_id, Operation.DESCRIBE),
            ),
        ),
        Principal(
            "alerts",
            "forwards operator alerts to a webhook",
            (
                *_topics(settings, read, "alerts"),
                *_topics(settings, write, "dlq"),
                _group(settings.alerts.group_id),
            ),
        ),
        Principal(
            "operator",
            "announces, promotes and rolls back models; exports labelled data to fit them",
            (
                *_topics(settings, write, "models", "model-history"),
                *_topics(settings, read, "models", "model-history"),
                *_topics(settings, read, "feedback", "defects", "verdicts", "frames"),
                announce_txn,
            ),
        ),
        Principal(
            "shadow",
            "scores frames with a candidate model beside the serving one",
            (
                *_topics(settings, read, "frames", "verdicts", "feedback"),
                *_topics(settings, write, "shadow-verdicts"),
                _group(settings.shadow.group_id),
            ),
        ),
        Principal(
            "refit-check",
            "proposes refits from the operators' judgements",
            tuple(_topics(settings, read, "feedback", "models", "model-history")),
        ),
        Principal(
            "console",
            "the operator console: shows the line's results, records the operators' feedback",
            (
                *_topics(
                    settings, read, "verdicts", "defects", "reports", "models", "model-history", "feedback"
                ),
                *_topics(settings, write, "feedback"),
            ),
        ),
        Principal(
            "admin",
            "creates and configures topics; manages ACLs and credentials",
            (*admin_topics, *admin_cluster, _group("*", Operation.DESCRIBE)),
        ),
    )


def principal(settings: Settings, name: str) -> Principal:
    for found in principals(settings):
        if found.name == name:
            return found
    known = ", ".join(p.name for p in principals(settings))
    raise KeyError(f"no principal {name!r}; known: {known}")


# The names alone (the same for any settings), for command-line choices and the compose file's test.
PRINCIPAL_NAMES = (
    "camera",
    "camera-gateway",
    "scorer",
    "explainer",
    "plc-bridge",
    "alerts",
    "operator",
    "shadow",
    "refit-check",
    "console",
    "admin",
)
