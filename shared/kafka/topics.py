"""The topic table: every Lineguard topic, its key, value schema, partitions and configuration.

Names are logical; ``settings.topic(name)`` adds the prefix (``lineguard.frames``). To add a topic,
add a row to ``TOPICS``; ``ensure_topics``, the docs test and the AsyncAPI test all read this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.limits import KAFKA_MAX_MESSAGE_BYTES

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
GIB = 1 << 30

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


def _stream(
    name: str,
    key: str,
    schema: str,
    partitions: int | None,
    retention_ms: int,
    description: str,
    **extra: int,
) -> TopicSpec:
    """A topic kept for ``retention_ms`` (``extra``: more configuration, ``retention_bytes=`` for
    ``retention.bytes``) whose records may be as large as the largest message."""
    config = {"retention.ms": str(retention_ms), "max.message.bytes": str(KAFKA_MAX_MESSAGE_BYTES)}
    config.update({option.replace("_", "."): str(value) for option, value in extra.items()})
    return TopicSpec(name, key, f"lineguard.{schema}", partitions, description, config)


# One row per topic: name, key, value schema, partitions, retention, description, extra configuration.
# fmt: off
TOPICS: tuple[TopicSpec, ...] = (
    # Frames are big and only useful while fresh: an hour, and at most 1 GiB per partition.
    _stream("frames", "camera_id", "Frame", None, HOUR_MS,
            "Camera frames in. One partition per scorer at full parallelism.",
            retention_bytes=GIB, segment_bytes=256 << 20),
    _stream("verdicts", "station_id", "Verdict", 4, 7 * DAY_MS,
            "One verdict per frame: the PLC gateway topic. Keyed by station so each station's verdicts "
            "stay in order."),
    _stream("defects", "station_id", "DefectEvent", 2, 3 * DAY_MS,
            "Rejected and review verdicts with the image and anomaly map, for the explainer.",
            retention_bytes=GIB),
    _stream("reports", "station_id", "Report", 2, 30 * DAY_MS,
            "The explainer's defect reports (VLM or marked fallback), one per defect event; the full "
            "report files are in the report store."),
    _stream("dlq", "source key (the original record's key)", "DeadLetter", 1, 14 * DAY_MS,
            "Dead letters: records that could not be processed, kept whole with the reason."),
    _stream("alerts", "station_id", "AlertEvent", 1, 7 * DAY_MS,
            "Operator alerts raised by the scorer (consecutive rejects, unknown product, score drift), "
            "forwarded to a webhook by `lineguard alerts`."),
    # Compacted, not retained by time: the last announcement is the model to serve.
    TopicSpec("models", '"current"', "lineguard.ModelAnnouncement", 1,
              "Model announcements; compacted, so the last one is the model to serve.",
              {"cleanup.policy": "compact", "max.message.bytes": str(1 << 20),
               "min.cleanable.dirty.ratio": "0.1"}),
    # Compacted; one record per camera per gateway transaction, so segments roll hourly and
    # tombstones go after an hour: a restarting gateway reads little more than the last hour.
    TopicSpec("camera-ledger", "camera_id", "lineguard.CameraLedger", 1,
              "The camera gateway's hot-folder files committed with each transaction (exactly one frame "
              "per file across restarts); compacted, the last record per camera counts.",
              {"cleanup.policy": "compact", "max.message.bytes": str(1 << 20),
               "min.cleanable.dirty.ratio": "0.1", "segment.ms": str(HOUR_MS),
               "delete.retention.ms": str(HOUR_MS)}),
    # Compacted by frame: the latest judgement of a frame counts; kept until compacted, never by time.
    TopicSpec("feedback", "frame_id", "lineguard.Feedback", 1,
              "Operators' judgements of frames from the console (defect with type and regions, or good: "
              "a false reject); compacted, the last record per frame counts. Read by `lineguard labels "
              "export`.",
              {"cleanup.policy": "compact", "max.message.bytes": str(1 << 20),
               "min.cleanable.dirty.ratio": "0.1"}),
    # Shadow scoring (`lineguard shadow`): a candidate model's verdicts, never read by the PLC bridge.
    _stream("shadow-verdicts", "station_id", "Verdict", 4, 7 * DAY_MS,
            "Verdicts of a candidate model scoring frames beside the serving one (`lineguard shadow`); "
            "compared with `verdicts` by frame id, never acted on."),
    # Every announcement ever made, in the same transaction as `models`; kept (no time or size limit).
    TopicSpec("model-history", "model_version", "lineguard.ModelHistoryEntry", 1,
              "Every model announcement as sent (signature included), with the command, who and why: "
              "`models` is compacted to its last record, this topic keeps them all. Read by "
              "`lineguard rollback` and the console.",
              {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1",
               "max.message.bytes": str(1 << 20)}),
)
# fmt: on


def topic_spec(name: str) -> TopicSpec:
    for spec in TOPICS:
        if spec.name == name:
            return spec
    raise KeyError(f"no topic {name!r}; known: {', '.join(s.name for s in TOPICS)}")


def partitions_for(spec: TopicSpec, frames_partitions: int) -> int:
    return frames_partitions if spec.partitions is None else spec.partitions
