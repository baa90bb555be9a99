"""The explainer on the real broker: defect events in, reports on the topic and on disk.

The VLM is the local OpenAI-protocol server (tests/support/openai_server.py); Kafka is real.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.explainer import metrics
from services.explainer.service import run_explainer
from services.explainer.store import ReportStore
from shared.kafka.client import header, make_consumer, make_producer
from shared.messages.codec import decode, encode
from shared.messages.schemas import DeadLetter, DefectEvent, Report
from shared.settings import ExplainerSettings, Settings
from tests.support.defect_events import answer_json, make_event
from tests.support.openai_server import FakeOpenAIServer, ReceivedRequest, Reply

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def vlm_server() -> Iterator[FakeOpenAIServer]:
    def always_valid(_: ReceivedRequest) -> Reply:
        return Reply(content=answer_json())

    with FakeOpenAIServer(responder=always_valid) as server:
        yield server


def with_explainer(settings: Settings, **values: object) -> Settings:
    base: dict[str, object] = {
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "max_attempts": 2,
        "requests_per_minute": 60_000,
        "follow_up_below": 0.0,
        "request_timeout_s": 5.0,
        "group_id": f"{settings.topic_prefix}-explainer",
    }
    base.update(values)
    return settings.model_copy(update={"explainer": ExplainerSettings(**base)})


async def publish(settings: Settings, events: list[DefectEvent], garbage: int = 0) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
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
    finally:
        await producer.stop()


async def consume(settings: Settings, topic: str, count: int, timeout_s: float = 30.0) -> list[Any]:
    consumer = make_consumer(settings, settings.topic(topic), group_id=None)
    await consumer.start()
    try:
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            for part in (await consumer.getmany(timeout_ms=300)).values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


async def test_defect_events_become_reports_on_the_topic_and_on_disk(
    kafka_settings: Settings, vlm_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    settings = with_explainer(
        kafka_settings, base_url=vlm_server.base_url, api_key="sk-it", report_dir=tmp_path
    )
    events = [make_event(f"it-{i}", seed=i, station_id=f"station-{i % 2}") for i in range(4)]
    await publish(settings, [*events, events[1]], garbage=1)  # one re-delivery, one bad record

    stop = asyncio.Event()
    service = asyncio.create_task(run_explainer(settings, stop))
    try:
        records = await consume(settings, "reports", len(events))
        dead = await consume(settings, "dlq", 1)
        # Give the duplicate time to be seen (it must not produce anything).
        await asyncio.sleep(1.0)
        records += await consume(settings, "reports", len(events) + 1, timeout_s=2.0)
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
    events = [make_event(f"held-{i}", seed=i) for i in range(3)]
    await publish(kafka_settings, events)

    with FakeOpenAIServer() as down:  # answers 500 to everything
        settings = with_explainer(
            kafka_settings,
            base_url=down.base_url,
            api_key="sk-it",
            report_dir=tmp_path,
            when_endpoint_down="hold",
            hold_retry_s=60,
        )
        stop = asyncio.Event()
        service = asyncio.create_task(run_explainer(settings, stop))
        deadline = time.monotonic() + 30
        while metrics.REGISTRY.get_sample_value("lineguard_explainer_held_events") != len(events):
            assert time.monotonic() < deadline, "the explainer did not hold the events"
            await asyncio.sleep(0.1)
        assert down.chat_requests()  # it did try the endpoint
        stop.set()
        assert await asyncio.wait_for(service, timeout=30) == 0  # nothing finished, nothing committed
    assert ReportStore(tmp_path).reports() == []

    def valid(_: ReceivedRequest) -> Reply:
        return Reply(content=answer_json())

    with FakeOpenAIServer(responder=valid) as up:
        settings = with_explainer(
            kafka_settings,
            base_url=up.base_url,
            api_key="sk-it",
            report_dir=tmp_path,
            when_endpoint_down="hold",
        )
        stop = asyncio.Event()
        service = asyncio.create_task(run_explainer(settings, stop, max_events=len(events)))
        try:
            records = await consume(settings, "reports", len(events))
        finally:
            stop.set()
            await asyncio.wait_for(service, timeout=30)
    assert sorted(decode(r.value, Report).frame_id for r in records) == [f"held-{i}" for i in range(3)]
    assert len(up.chat_requests()) == len(events)
