"""The principal table: each service gets exactly what its code does with Kafka, nobody more."""

from __future__ import annotations

from shared.kafka.principals import (
    PRINCIPAL_NAMES,
    Grant,
    Operation,
    Pattern,
    Resource,
    principal,
    principals,
)
from shared.settings import Settings

SETTINGS = Settings(topic_prefix="plant7")
T = SETTINGS.topic


def _topic_ops(name: str) -> dict[str, set[str]]:
    """topic -> operations, for one principal's literal topic grants."""
    out: dict[str, set[str]] = {}
    for g in principal(SETTINGS, name).grants:
        if g.resource is Resource.TOPIC and g.pattern is Pattern.LITERAL:
            out.setdefault(g.name, set()).add(g.operation.name)
    return out


def test_the_names_are_the_table() -> None:
    assert tuple(p.name for p in principals(SETTINGS)) == PRINCIPAL_NAMES
    assert len(set(PRINCIPAL_NAMES)) == len(PRINCIPAL_NAMES)


def test_each_service_reads_and_writes_what_its_code_does() -> None:
    assert _topic_ops("camera") == {T("frames"): {"WRITE"}}
    assert _topic_ops("scorer") == {
        T("frames"): {"READ"},
        T("models"): {"READ"},
        **{T(n): {"WRITE"} for n in ("verdicts", "defects", "dlq", "alerts")},
    }
    assert _topic_ops("explainer") == {
        T("defects"): {"READ"},
        T("reports"): {"READ", "WRITE"},  # reads its own reports back after a crash
        T("dlq"): {"WRITE"},
    }
    assert _topic_ops("plc-bridge") == {
        T("verdicts"): {"READ"},
        T("dlq"): {"WRITE"},
        T("frames"): {"DESCRIBE"},  # offsets of the scorer's input, never a frame
    }
    assert _topic_ops("alerts") == {T("alerts"): {"READ"}, T("dlq"): {"WRITE"}}
    assert _topic_ops("camera-gateway") == {T("frames"): {"WRITE"}, T("camera-ledger"): {"READ", "WRITE"}}
    assert _topic_ops("operator") == {
        # announce, promote, rollback: both written in one transaction, after reading both back
        **{T(n): {"READ", "WRITE"} for n in ("models", "model-history")},
        **{T(n): {"READ"} for n in ("feedback", "defects", "verdicts", "frames")},  # labels export
    }
    assert _topic_ops("shadow") == {
        **{T(n): {"READ"} for n in ("frames", "verdicts", "feedback")},
        T("shadow-verdicts"): {"WRITE"},
    }
    assert _topic_ops("refit-check") == {T(n): {"READ"} for n in ("feedback", "models", "model-history")}
    assert _topic_ops("console") == {
        **{T(n): {"READ"} for n in ("verdicts", "defects", "reports", "models", "model-history")},
        T("feedback"): {"READ", "WRITE"},
    }
    assert _topic_ops("admin") == {}  # topics by prefix, below


def test_only_the_scorer_writes_verdicts_and_only_the_operator_writes_models() -> None:
    writers: dict[str, set[str]] = {}
    for p in principals(SETTINGS):
        for g in p.grants:
            if g.resource is Resource.TOPIC and g.operation in (Operation.WRITE, Operation.ALL):
                writers.setdefault(g.name, set()).add(p.name)
            assert g.operation is not Operation.ALL, p.name
    assert writers[T("verdicts")] == {"scorer"}
    assert writers[T("models")] == writers[T("model-history")] == {"operator"}
    assert writers[T("shadow-verdicts")] == {"shadow"}
    assert writers[T("frames")] == {"camera", "camera-gateway"}
    assert writers[T("feedback")] == {"console"}
    assert writers[T("dlq")] == {"scorer", "explainer", "plc-bridge", "alerts"}


def test_groups_and_transactional_ids_follow_the_settings() -> None:
    settings = Settings(topic_prefix="p").model_copy(
        update={
            "scorer": Settings().scorer.model_copy(
                update={"group_id": "g-s", "transactional_id_prefix": "tx"}
            ),
            "shadow": Settings().shadow.model_copy(update={"group_id": "g-shadow"}),
            "promotion": Settings().promotion.model_copy(update={"transactional_id_prefix": "ann"}),
        }
    )
    scorer = set(principal(settings, "scorer").grants)
    assert Grant(Resource.GROUP, "g-s", Pattern.LITERAL, Operation.READ) in scorer
    assert Grant(Resource.TRANSACTIONAL_ID, "tx-", Pattern.PREFIXED, Operation.WRITE) in scorer
    gateway = set(principal(settings, "camera-gateway").grants)
    assert (
        Grant(Resource.TRANSACTIONAL_ID, "lineguard-camera-gateway-", Pattern.PREFIXED, Operation.WRITE)
        in gateway
    )
    fixed = settings.model_copy(
        update={"camera_gateway": settings.camera_gateway.model_copy(update={"transactional_id": "gw-7"})}
    )
    fixed_grants = principal(fixed, "camera-gateway").grants
    assert Grant(Resource.TRANSACTIONAL_ID, "gw-7", Pattern.LITERAL, Operation.WRITE) in fixed_grants
    operator = set(principal(settings, "operator").grants)
    assert Grant(Resource.TRANSACTIONAL_ID, "ann-", Pattern.PREFIXED, Operation.WRITE) in operator
    shadow = principal(settings, "shadow").grants
    assert [g.name for g in shadow if g.resource is Resource.GROUP] == ["g-shadow"]  # never the scorer's
    assert not [g for g in shadow if g.resource is Resource.TRANSACTIONAL_ID]
    assert not [g for g in principal(settings, "refit-check").grants if g.resource is not Resource.TOPIC]
    bridge = set(principal(settings, "plc-bridge").grants)
    assert Grant(Resource.GROUP, "g-s", Pattern.LITERAL, Operation.DESCRIBE) in bridge
    for name in ("explainer", "plc-bridge", "alerts"):
        groups = [
            g
            for g in principal(settings, name).grants
            if g.resource is Resource.GROUP and g.operation is Operation.READ
        ]
        assert [g.name for g in groups] == [getattr(settings, name.replace("-", "_")).group_id]


def test_no_service_may_change_the_cluster_or_use_another_prefix() -> None:
    for p in principals(SETTINGS):
        for g in p.grants:
            if p.name != "admin":
                assert g.resource is not Resource.CLUSTER, (p.name, g)
                assert g.operation not in (Operation.CREATE, Operation.DELETE, Operation.ALTER), (p.name, g)
            if g.resource is Resource.TOPIC:
                assert g.name.startswith("plant7."), (p.name, g)
    admin = set(principal(SETTINGS, "admin").grants)
    assert Grant(Resource.TOPIC, "plant7.", Pattern.PREFIXED, Operation.CREATE) in admin
    assert Grant(Resource.CLUSTER, "kafka-cluster", Pattern.LITERAL, Operation.ALTER) in admin
    assert not any(g.operation in (Operation.READ, Operation.WRITE) for g in admin)  # admin never reads data
