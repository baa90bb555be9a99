"""Exactly one report per defect event through SIGKILL at the dangerous points (issue 9), and the
explainer's documented start without a VLM (issue 12).

The real ``lineguard explainer`` process on the real broker; the VLM is the OpenAI-protocol
server on localhost, made slow for one event so that the process can be killed while it waits:
by then the other events' reports are written and published but their offsets are not committed
(an earlier event holds the partition's commit), the most dangerous place to die.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path

import pytest

from services.explainer import metrics
from services.explainer.core import build_explainer
from services.explainer.service import run_explainer
from services.explainer.store import ReportStore
from shared.kafka.client import make_producer
from shared.messages.codec import encode
from shared.messages.schemas import DefectEvent, Report
from shared.settings import ExplainerSettings, Settings
from tests.support import topics
from tests.support.line import offline_explainer_env
from tests.support.messages import defect_event
from tests.support.openai_server import FakeOpenAIServer, ReceivedRequest, Reply
from tests.support.processes import ServiceProcess, service_env
from tests.support.reports import answer_json
from tests.support.topics import TopicReader
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SLOW_PRODUCT = "slowpart"


async def publish(settings: Settings, events: list[DefectEvent]) -> None:
    async with make_producer(settings) as producer:
        for event in events:
            await producer.send_and_wait(
                settings.topic("defects"), encode(event), key=event.verdict.station_id.encode()
            )


async def committed_and_end(settings: Settings, group_id: str) -> tuple[int, int]:
    """Summed over the defects partitions: the group's committed offsets and the end offsets."""
    offsets = [await topics.committed_and_end(settings, group_id, "defects", p) for p in range(2)]
    return sum(committed or 0 for committed, _ in offsets), sum(end for _, end in offsets)


def product_of(request: ReceivedRequest) -> str:
    for text in request.texts():
        for line in text.splitlines():
            if line.startswith("Product class: "):
                return line.split(": ", 1)[1].split(" ", 1)[0]
    return ""


def explainer_values(settings: Settings, vlm: FakeOpenAIServer, report_dir: Path) -> dict[str, object]:
    return {
        "base_url": vlm.base_url,
        "api_key": "sk-crash-test",
        "report_dir": str(report_dir),
        "group_id": f"{settings.topic_prefix}-explainer",
        "request_timeout_s": 120,
        "max_attempts": 1,
        "requests_per_minute": 60_000,
        "follow_up_below": 0,
        "max_concurrency": 4,
    }


async def test_sigkill_while_an_earlier_event_waits_for_the_vlm_gives_one_report_each(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    settings = kafka_settings
    slow = threading.Event()
    slow.set()

    def respond(request: ReceivedRequest) -> Reply:
        delay = 90.0 if slow.is_set() and product_of(request) == SLOW_PRODUCT else 0.0
        return Reply(content=answer_json(), delay_s=delay)

    events = [
        defect_event("crash-slow", product=SLOW_PRODUCT, seed=1),
        defect_event("crash-fast-1", seed=2),
        defect_event("crash-fast-2", seed=3),
    ]
    processes: list[ServiceProcess] = []
    with FakeOpenAIServer(responder=respond) as vlm:
        values = explainer_values(settings, vlm, tmp_path / "reports")
        env = service_env(settings, explainer=values)
        async with TopicReader(settings, "reports", Report) as reports:
            await publish(settings, events)  # one station: one partition, the slow event first
            first = ServiceProcess(["explainer"], env, tmp_path / "first.log")
            processes.append(first)
            await reports.wait_for(2, timeout=90, settle=0.5)
            await wait_until(
                lambda: any(product_of(r) == SLOW_PRODUCT for r in vlm.chat_requests()), 30, "the slow call"
            )
            # The dangerous state: two reports out, none of the three offsets committed.
            assert await committed_and_end(settings, str(values["group_id"])) == (0, 3)
            first.kill()
            slow.clear()

            second = ServiceProcess(["explainer"], env, tmp_path / "second.log")
            processes.append(second)
            got = await reports.wait_for(3, timeout=90, settle=3.0)
            assert await second.terminate() == 0
        for process in processes:
            if process.process.poll() is None:
                process.kill()
        calls = Counter(product_of(r) for r in vlm.chat_requests())
    frames = Counter(r.frame_id for r in got.values)
    assert frames == Counter({e.verdict.frame_id: 1 for e in events}), frames  # no duplicate
    assert calls == Counter({SLOW_PRODUCT: 2, "washer": 2})  # the fast ones were not asked again
    assert len(ReportStore(tmp_path / "reports").reports()) == 3
    assert await committed_and_end(settings, str(values["group_id"])) == (3, 3)
    assert "sk-crash-test" not in (tmp_path / "first.log").read_text()
    assert "sk-crash-test" not in (tmp_path / "second.log").read_text()


async def test_a_report_published_but_not_marked_is_not_published_again(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """The crash between publishing a report and writing its marker (and its twin, between
    writing the report and publishing it), recovered on re-delivery: one message each."""
    with FakeOpenAIServer(responder=lambda _: Reply(content=answer_json())) as vlm:
        explainer = ExplainerSettings(
            base_url=vlm.base_url,
            api_key="sk-it",
            report_dir=tmp_path,
            follow_up_below=0.0,
            requests_per_minute=60_000,
            group_id=f"{kafka_settings.topic_prefix}-explainer",
            hold_retry_s=1.0,
        )
        settings = kafka_settings.model_copy(update={"explainer": explainer})
        published, stored = (
            defect_event("published-unmarked", seed=1),
            defect_event("stored-unpublished", seed=2),
        )
        async with TopicReader(settings, "reports", Report) as reports:
            await publish(settings, [published])
            stop = asyncio.Event()
            service = asyncio.create_task(run_explainer(settings, stop, max_events=1))
            await reports.wait_for(1, timeout=60, settle=0.2)
            stop.set()
            await asyncio.wait_for(service, 30)
            store = ReportStore(tmp_path)
            v = published.verdict
            base = store.base_path(v.frame_id, v.line_id, v.station_id, v.captured_at)
            marker = base.with_name(base.name + ".published")
            marker.unlink()  # as if killed between the send and the marker
            core = build_explainer(explainer)
            await core.handle(stored)  # as if killed between the store and the send
            await core.aclose()
            calls = len(vlm.chat_requests())
            avoided = metrics.REGISTRY.get_sample_value("lineguard_explainer_republish_avoided_total") or 0

            await publish(settings, [published, stored])  # both delivered again
            stop = asyncio.Event()
            service = asyncio.create_task(run_explainer(settings, stop, max_events=2))
            await asyncio.wait_for(service, 60)
            got = await reports.wait_for(2, timeout=30, settle=2.0)
    assert Counter(r.frame_id for r in got.values) == {"published-unmarked": 1, "stored-unpublished": 1}
    assert marker.exists() and len(vlm.chat_requests()) == calls  # no VLM call for either
    assert metrics.REGISTRY.get_sample_value("lineguard_explainer_republish_avoided_total") == avoided + 1


async def test_the_documented_compose_start_without_a_vlm_writes_fallback_reports(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    """docker-compose mounts an empty key file and leaves the base URL empty: the explainer must
    start in its fallback mode, not exit and restart forever (issue 12)."""
    empty = tmp_path / "vlm_api_key"
    empty.write_text("")
    env = offline_explainer_env(kafka_settings, tmp_path / "reports", api_key_file=str(empty))
    async with TopicReader(kafka_settings, "reports", Report) as reports:
        process = ServiceProcess(["explainer"], env, tmp_path / "explainer.log")
        try:
            await process.wait_for_log("explainer_started", 60)
            await publish(kafka_settings, [defect_event("offline-1")])
            (report,) = (await reports.wait_for(1, timeout=60, settle=0.5)).values
            assert await process.terminate() == 0
        finally:
            if process.process.poll() is None:
                process.kill()
    assert report.source == "fallback" and report.fallback_reason == "no_endpoint"
    assert '"level": "error"' not in process.log_text()
