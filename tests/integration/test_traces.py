"""One frame's trace across the line: ``camera-sim`` -> ``scorer`` -> ``explainer`` (fallback reports,
no VLM), each a real ``lineguard`` process exporting over OTLP/HTTP (``LINEGUARD_OTEL_EXPORTER=otlp``)
to a real receiver on localhost. The camera's producer span, the scorer's span for that frame and
the explainer's span for its defect event share one trace id, each the parent of the next, with
the messaging semantic-convention attributes; the explainer's log line for the report carries the
same trace id."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from shared.settings import Settings
from tests.support.line import LineModels, camera_sim_args, offline_explainer_env, scorer_settings
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.processes import ServiceProcess, service_env
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

READY_S = 120.0  # torch's cold start on a busy two-core machine
PRODUCER, CONSUMER = Span.SpanKind.SPAN_KIND_PRODUCER, Span.SpanKind.SPAN_KIND_CONSUMER


def frame_spans(spans: list[ReceivedSpan], frame_id: str) -> dict[str, ReceivedSpan]:
    """The frame's span of each service (the scorer's per-frame span, not its batch spans)."""
    return {s.service: s for s in spans if s.attributes.get("lineguard.frame_id") == frame_id}


async def test_one_frames_spans_from_camera_scorer_and_explainer_share_one_trace(
    kafka_settings: Settings, line_models: LineModels, tmp_path: Path
) -> None:
    settings = scorer_settings(kafka_settings)
    processes: list[ServiceProcess] = []

    def start(args: list[str], env: dict[str, str], receiver: OtlpReceiver) -> ServiceProcess:
        process = ServiceProcess(args, {**env, **receiver.exporter_env(200)}, tmp_path / f"{args[0]}.log")
        processes.append(process)
        return process

    def batch_spans(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
        """The scorer's batch-level spans that link to (not continue) the frame's trace."""
        return [s for s in spans if s.service == "scorer" and trace_id in s.links]

    def reported() -> list[tuple[str, dict[str, ReceivedSpan]]]:
        """Frames whose explainer span and the scorer's batch spans have arrived, with their spans
        from every service. Each process exports on its own schedule, so the scorer's ``publish``
        span can reach the receiver after the explainer's span for the same frame."""
        spans = receiver.received()
        frames = {s.attributes["lineguard.frame_id"] for s in spans if s.service == "explainer"}
        found = [(f, frame_spans(spans, str(f))) for f in sorted(frames)]
        complete = [(str(f), by) for f, by in found if {"camera-sim", "scorer", "explainer"} <= set(by)]
        return [
            (f, by)
            for f, by in complete
            if {"score_batch", "publish"} <= {s.name for s in batch_spans(spans, by["camera-sim"].trace_id)}
        ]

    try:
        with OtlpReceiver() as receiver:
            scorer = start(
                ["scorer", "--model", str(line_models.a)], service_env(settings, "scorer"), receiver
            )
            explainer = start(["explainer"], offline_explainer_env(settings, tmp_path / "reports"), receiver)
            await scorer.wait_for_event("partitions_assigned", READY_S)
            await explainer.wait_for_event("explainer_started", READY_S)
            start(
                camera_sim_args(
                    *("--pool", "8", "--rate", "10", "--count", "12", "--defect-rate", "0.5"),
                    *("--deadline-ms", "5000", "--hint"),
                ),
                service_env(settings),
                receiver,
            )
            (frame_id, spans), *_ = await wait_until(
                reported, timeout=60, what="a frame's spans from camera, scorer and explainer"
            )
            all_spans = receiver.received()
    finally:
        for process in processes:
            process.kill()

    camera, scorer_span, explainer_span = spans["camera-sim"], spans["scorer"], spans["explainer"]
    # One trace, each span the parent of the next: the scorer and the explainer continue it.
    assert camera.trace_id == scorer_span.trace_id == explainer_span.trace_id
    assert scorer_span.parent_span_id == camera.span_id
    assert explainer_span.parent_span_id == scorer_span.span_id

    frames, defects = settings.topic("frames"), settings.topic("defects")
    assert camera.kind == PRODUCER
    assert camera.attributes["messaging.system"] == "kafka"
    assert camera.attributes["messaging.operation.type"] == "publish"
    assert camera.attributes["messaging.destination.name"] == frames
    assert camera.attributes["messaging.kafka.message.key"] == settings.camera_sim.camera_id  # one camera
    for span, topic in ((scorer_span, frames), (explainer_span, defects)):
        assert span.kind == CONSUMER, span
        assert span.attributes["messaging.system"] == "kafka"
        assert span.attributes["messaging.operation.type"] == "process"
        assert span.attributes["messaging.destination.name"] == topic
        assert span.attributes["messaging.kafka.offset"] >= 0
        assert int(span.attributes["messaging.destination.partition.id"]) >= 0
    # The scorer's batch and publish spans link to the frame's trace instead of continuing it.
    linked = batch_spans(all_spans, camera.trace_id)
    assert {s.name for s in linked} == {"score_batch", "publish"}
    kinds = {s.name: s.kind for s in linked}
    assert kinds == {"score_batch": CONSUMER, "publish": PRODUCER}
    # The explainer's log line for this frame's report names the trace and its span.
    (written,) = [
        e for e in explainer.events() if e["event"] == "report_written" and e["frame_id"] == frame_id
    ]
    assert (written["trace_id"], written["span_id"]) == (explainer_span.trace_id, explainer_span.span_id)
