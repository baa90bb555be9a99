"""The explainer on the real broker: defect events in, reports on the topic and on disk.

The VLM is the local OpenAI-protocol server (tests/support/openai_server.py); Kafka is real.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.explainer import metrics
from services.explainer.service import run_explainer
from services.explainer.store import ReportStore
from shared.kafka.client import header, make_producer
from shared.messages.codec import decode, encode
from shared.messages.schemas import DeadLetter, DefectEvent, Report
from shared.settings import Settings
from tests.support.line import with_explainer
from tests.support.messages import defect_event
from tests.support.openai_server import FakeOpenAIServer, ReceivedRequest, Reply
from tests.support.reports import answer_json, valid_answer
from tests.support.topics import read_records
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def vlm_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(responder=valid_answer) as server:
        yield server


async def publish(settings: Settings, events: list[DefectEvent], garbage: int = 0) -> None:
    async with make_producer(settings) as producer:
        for i, event in enumerate(events):
            traceparent = f"00-{TRACE_ID}-{i + 1:016x}-01".encode()
            await producer.send_and_wait(
                settings.topic("defects"),
                encode(event),
                key=event.verdict.station_id.encode(),
                headers=[("traceparent", traceparent)],
            )
        for _ in range(garbage):
            await producer.send_and_wait(
                settings.topic("defects"), b"\x92not a defect event", key=b"station-1"
            )


async def test_defect_events_become_reports_on_the_topic_and_on_disk(
    kafka_settings: Settings, vlm_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    settings = with_explainer(kafka_settings, tmp_path, vlm_server)
    events = [defect_event(f"it-{i}", seed=i, station_id=f"station-{i % 2}") for i in range(4)]
    await publish(settings, [*events, events[1]], garbage=1)  # one re-delivery, one bad record

    stop = asyncio.Event()
    service = asyncio.create_task(run_explainer(settings, stop))
    try:
        records = await read_records(settings, "reports", len(events), timeout_s=30)
        dead = await read_records(settings, "dlq", 1, timeout_s=30)
        # Give the duplicate time to be seen (it must not produce anything).
        await asyncio.sleep(1.0)
        records += await read_records(settings, "reports", len(events) + 1, timeout_s=2.0)
    finally:
        stop.set()
        done = await asyncio.wait_for(service, timeout=30)

    reports = [decode(r.value, Report) for r in records]
    by_frame = {r.frame_id: r for r in reports}
    assert set(by_frame) == {e.verdict.frame_id for e in events}
    assert all(r.source == "vlm" and r.grade == "E" for r in reports)  # reject at 0.8: severe band
    assert len(vlm_server.chat_requests()) == len(events)  # the re-delivered event cost nothing
    assert done == len(events) + 2  # four reports, one duplicate, one dead letter
    for record in records:
        report = decode(record.value, Report)
        assert record.key == report.station_id.encode()
        # The report's span continues the frame's trace.
        assert TRACE_ID in (header(record.headers, "traceparent") or b"").decode()
        assert (tmp_path / report.report_path).is_file()
        for suffix in (".md", ".html"):
            assert (tmp_path / report.report_path).with_suffix(suffix).is_file()
    assert len(ReportStore(tmp_path).reports()) == len(events)
    (letter,) = [decode(r.value, DeadLetter) for r in dead]
    assert letter.service == "explainer" and letter.original_value == b"\x92not a defect event"


async def test_held_events_stay_uncommitted_and_are_reported_after_a_restart(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    events = [defect_event(f"held-{i}", seed=i) for i in range(3)]
    await publish(kafka_settings, events)

    with FakeOpenAIServer() as down:  # answers 500 to everything
        settings = with_explainer(kafka_settings, tmp_path, down, when_endpoint_down="hold", hold_retry_s=60)
        stop = asyncio.Event()
        service = asyncio.create_task(run_explainer(settings, stop))
        await wait_until(
            lambda: metrics.REGISTRY.get_sample_value("lineguard_explainer_held_events") == len(events),
            30,
            "the explainer to hold the events",
        )
        assert down.chat_requests()  # it did try the endpoint
        stop.set()
        assert await asyncio.wait_for(service, timeout=30) == 0  # nothing finished, nothing committed
    assert ReportStore(tmp_path).reports() == []

    def valid(_: ReceivedRequest) -> Reply:
        return Reply(content=answer_json())

    with FakeOpenAIServer(responder=valid) as up:
        settings = with_explainer(kafka_settings, tmp_path, up, when_endpoint_down="hold")
        stop = asyncio.Event()
        service = asyncio.create_task(run_explainer(settings, stop, max_events=len(events)))
        try:
            records = await read_records(settings, "reports", len(events), timeout_s=30)
        finally:
            stop.set()
            await asyncio.wait_for(service, timeout=30)
    assert sorted(decode(r.value, Report).frame_id for r in records) == [f"held-{i}" for i in range(3)]
    assert len(up.chat_requests()) == len(events)
