"""The topic table: every Lineguard topic, its key, value schema, partitions and configuration.

Names are logical; ``settings.topic(name)`` adds the prefix (``lineguard.frames``). To add a topic,
add a row to ``TOPICS``; ``ensure_topics``, the docs test and the AsyncAPI test all read this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.messages.schemas import DEAD_LETTER_MAX_BYTES

# Largest record batch a topic, the broker and our producers accept: the biggest message
# (a dead letter carrying a maximal original record) plus Kafka's record and header overhead.
KAFKA_MAX_MESSAGE_BYTES = DEAD_LETTER_MAX_BYTES + (1 << 20)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

# The key of every ModelAnnouncement: the compacted topic then keeps exactly the current model.
MODEL_ANNOUNCEMENT_KEY = b"current"


@dataclass(frozen=True)
class TopicSpec:
    name: str  # logical name, prefixed at run time
    key: str  # what the record key holds
    schema: str  # the value's message schema name
    partitions: int | None  # None: the frames partition count (scoring parallelism)
    description: str
    config: Mapping[str, str] = field(default_factory=dict)


def _config(retention_ms: int, **extra: str) -> dict[str, str]:
    return {
        "retention.ms": str(retention_ms),
        "max.message.bytes": str(KAFKA_MAX_MESSAGE_BYTES),
        **extra,
    }


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        "frames",
        key="camera_id",
        schema="lineguard.Frame",
        partitions=None,
        description="Camera frames in. One partition per scorer at full parallelism.",
        # Frames are big and only useful while fresh: an hour, and at most 1 GiB per partition.
        config=_config(HOUR_MS, **{"retention.bytes": str(1 << 30), "segment.bytes": str(256 << 20)}),
    ),
    TopicSpec(
        "verdicts",
        key="station_id",
        schema="lineguard.Verdict",
        partitions=4,
        description="One verdict per frame: the PLC gateway topic. Keyed by station so each "
        "station's verdicts stay in order.",
        config=_config(7 * DAY_MS),
    ),
    TopicSpec(
        "defects",
        key="station_id",
        schema="lineguard.DefectEvent",
        partitions=2,
        description="Rejected and review verdicts with the image and anomaly map, for the explainer.",
        config=_config(3 * DAY_MS, **{"retention.bytes": str(1 << 30)}),
    ),
    TopicSpec(
        "reports",
        key="station_id",
        schema="lineguard.Report",
        partitions=2,
        description="The explainer's defect reports (VLM or marked fallback), one per defect event; "
        "the full report files are in the report store.",
        config=_config(30 * DAY_MS),
    ),
    TopicSpec(
        "dlq",
        key="source key (the original record's key)",
        schema="lineguard.DeadLetter",
        partitions=1,
        description="Dead letters: records that could not be processed, kept whole with the reason.",
        config=_config(14 * DAY_MS),
    ),
    TopicSpec(
        "alerts",
        key="station_id",
        schema="lineguard.AlertEvent",
        partitions=1,
        description="Operator alerts raised by the scorer (consecutive rejects, unknown product, "
        "score drift), forwarded to a webhook by `lineguard alerts`.",
        config=_config(7 * DAY_MS),
    ),
    TopicSpec(
        "models",
        key='"current"',
        schema="lineguard.ModelAnnouncement",
        partitions=1,
        description="Model announcements; compacted, so the last one is the model to serve.",
        config={
            "cleanup.policy": "compact",
            "max.message.bytes": str(1 << 20),
            "min.cleanable.dirty.ratio": "0.1",
        },
    ),
)


def topic_spec(name: str) -> TopicSpec:
    for spec in TOPICS:
        if spec.name == name:
            return spec
    raise KeyError(f"no topic {name!r}; known: {', '.join(s.name for s in TOPICS)}")


def partitions_for(spec: TopicSpec, frames_partitions: int) -> int:
    return frames_partitions if spec.partitions is None else spec.partitions
