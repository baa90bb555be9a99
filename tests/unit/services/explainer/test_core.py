"""The explainer against a real HTTP server on localhost speaking the OpenAI chat-completions
protocol (tests/support/openai_server.py), scripted per test."""

import io
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.explainer import core
from services.explainer.core import Explainer, report_message
from services.explainer.facts import read_facts
from shared.messages.codec import decode, encode
from shared.messages.schemas import Report
from tests.support.messages import defect_event
from tests.support.openai_server import FakeOpenAIServer, Reply
from tests.support.reports import answer_json, fallback_document
from tests.unit.services.explainer.conftest import API_KEY

MakeExplainer = Callable[..., Explainer]


def image_size(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as image:
        return image.size


async def test_valid_json_answer_makes_a_vlm_report(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    vlm_server.script(Reply(content=answer_json(), prompt_tokens=2000, completion_tokens=250))
    explainer = make_explainer()
    outcome = await explainer.handle(defect_event("f-valid"))
    assert outcome.kind == "reported" and outcome.document is not None and outcome.json_path is not None
    doc = outcome.document
    assert doc.source == "vlm" and doc.vlm_model == "vision-test" and doc.grade == "E"  # reject, 0.8
    assert doc.findings[0].defect_type == "scratch" and doc.findings[0].location_agrees is True
    assert (doc.prompt_tokens, doc.completion_tokens, doc.vlm_calls) == (2000, 250, 1)
    assert doc.cost_usd == pytest.approx((2000 * 5 + 250 * 15) / 1e6)
    for suffix in (".json", ".md", ".html"):
        assert outcome.json_path.with_suffix(suffix).is_file()
    (request,) = vlm_server.chat_requests()
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.body["model"] == "vision-test"
    assert request.body["response_format"]["type"] == "json_schema"
    assert request.body["response_format"]["json_schema"]["strict"] is True
    images = request.images()
    assert [image_size(i) for i in images] == [(160, 120), (160, 120), image_size(images[2])]
    grounding = request.texts()[1]
    for fact in ("washer", "upper right", "0.800", "line-1", "station-1", "scratch", "1.25% of the part"):
        assert fact in grounding
    # Nothing secret or pictorial reaches the logs.
    logged = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert API_KEY not in logged and "base64" not in logged and "/9j/" not in logged


async def test_answer_in_markdown_fences(vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer) -> None:
    vlm_server.script(Reply(content="Here is the report:\n```json\n" + answer_json() + "\n```\nThanks."))
    outcome = await make_explainer().handle(defect_event("f-fenced"))
    assert outcome.document is not None and outcome.document.source == "vlm"
    assert not outcome.document.repaired and len(vlm_server.chat_requests()) == 1


async def test_invalid_json_is_repaired_in_one_round_trip(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    vlm_server.script(Reply(content='{"anomalous": true, "confidence": "high"'), Reply(content=answer_json()))
    outcome = await make_explainer().handle(defect_event("f-repair"))
    assert outcome.document is not None and outcome.document.source == "vlm" and outcome.document.repaired
    _, second = vlm_server.chat_requests()
    assert second.body["messages"][-2] == {
        "role": "assistant",
        "content": '{"anomalous": true, "confidence": "high"',
    }
    assert "cannot be used" in second.body["messages"][-1]["content"]
    assert outcome.document.vlm_calls == 2


async def test_answer_still_invalid_after_repair_gives_a_fallback(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    bad_location = answer_json(
        defects=[
            {"type": "x", "location": "top", "severity": "minor", "description": "", "possible_cause": ""}
        ]
    )
    vlm_server.script(Reply(content="no idea"), Reply(content=bad_location))
    outcome = await make_explainer().handle(defect_event("f-unrepairable"))
    doc = outcome.document
    assert doc is not None and doc.source == "fallback" and doc.fallback_reason == "vlm_invalid_answer"
    assert doc.vlm_calls == 2 and doc.cost_usd > 0  # what was spent is still recorded
    assert len(vlm_server.chat_requests()) == 2


async def test_429_then_success(vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer) -> None:
    vlm_server.script(
        Reply(status=429, content="slow down", headers={"Retry-After": "0.02"}), Reply(content=answer_json())
    )
    outcome = await make_explainer().handle(defect_event("f-429"))
    assert outcome.document is not None and outcome.document.source == "vlm"
    assert len(vlm_server.chat_requests()) == 2
    assert outcome.document.vlm_calls == 1  # only the answered call is charged


async def test_timeout_is_retried(vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer) -> None:
    vlm_server.script(Reply(content=answer_json(), delay_s=1.5), Reply(content=answer_json()))
    outcome = await make_explainer(request_timeout_s=0.3).handle(defect_event("f-timeout"))
    assert outcome.document is not None and outcome.document.source == "vlm"
    assert len(vlm_server.chat_requests()) == 2


async def test_timeouts_every_time_end_in_a_fallback(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    vlm_server.script(*[Reply(content=answer_json(), delay_s=1.5)] * 2)
    explainer = make_explainer(request_timeout_s=0.2, max_attempts=2, when_endpoint_down="fallback")
    outcome = await explainer.handle(defect_event("f-timeouts"))
    assert outcome.document is not None and outcome.document.fallback_reason == "endpoint_down"


async def test_500_forever_gives_a_fallback_report(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    explainer = make_explainer(when_endpoint_down="fallback", max_attempts=3)
    outcome = await explainer.handle(defect_event("f-500"))  # the server answers 500 to anything unscripted
    doc = outcome.document
    assert outcome.kind == "reported" and doc is not None
    assert doc.source == "fallback" and doc.fallback_reason == "endpoint_down" and doc.cost_usd == 0
    assert len(vlm_server.chat_requests()) == 3
    assert "NOT WRITTEN BY A VLM" in outcome.json_path.with_suffix(".md").read_text()  # type: ignore[union-attr]


async def test_500_forever_with_hold_policy_holds_the_event(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    explainer = make_explainer(when_endpoint_down="hold", max_attempts=2, hold_retry_s=7)
    event = defect_event("f-hold")
    outcome = await explainer.handle(event)
    assert outcome.kind == "held" and outcome.hold_reason == "endpoint_down" and outcome.retry_after_s >= 7
    assert explainer.store.reports() == []  # no report yet: nothing was decided
    vlm_server.script(Reply(content=answer_json()))  # the endpoint is back
    retried = await explainer.handle(event)
    assert retried.kind == "reported" and retried.document is not None and retried.document.source == "vlm"


async def test_held_too_long_falls_back(vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer) -> None:
    explainer = make_explainer(when_endpoint_down="hold", max_attempts=1, max_hold_s=60)
    outcome = await explainer.handle(defect_event("f-old"), first_seen=explainer.clock() - 61)
    assert outcome.document is not None and outcome.document.fallback_reason == "hold_limit"
    assert vlm_server.chat_requests() == []  # its report was due: written at once, no call


async def test_circuit_breaker_stops_calls_to_a_dead_endpoint(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    explainer = make_explainer(
        when_endpoint_down="fallback", max_attempts=2, breaker_failures=2, breaker_reset_s=60
    )
    first = await explainer.handle(defect_event("f-b1"))
    assert first.document is not None and first.document.fallback_reason == "endpoint_down"
    assert len(vlm_server.chat_requests()) == 2
    second = await explainer.handle(defect_event("f-b2"))
    assert second.document is not None and second.document.fallback_reason == "endpoint_down"
    assert len(vlm_server.chat_requests()) == 2  # the open circuit made no call


async def test_the_same_event_twice_makes_one_call_and_one_report(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    vlm_server.script(Reply(content=answer_json()), Reply(content=answer_json(location="center")))
    explainer = make_explainer()
    event = defect_event("f-twice")
    first = await explainer.handle(event)
    second = await explainer.handle(event)
    assert first.kind == "reported" and second.kind == "duplicate"
    assert second.document == first.document and not second.published
    explainer.store.mark_published(first.document)  # type: ignore[arg-type]
    third = await make_explainer().handle(event)  # a restarted explainer, same store
    assert third.kind == "duplicate" and third.published
    assert len(vlm_server.chat_requests()) == 1
    assert len(explainer.store.reports()) == 1


async def test_budget_exhausted_with_fallback_policy(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    explainer = make_explainer(daily_budget_usd=0.0, when_budget_spent="fallback")
    outcome = await explainer.handle(defect_event("f-broke"))
    assert outcome.document is not None and outcome.document.fallback_reason == "budget_spent"
    assert vlm_server.chat_requests() == []


async def test_budget_spent_by_earlier_calls_with_hold_policy(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    # At the default price (5 / 15 USD per million tokens) the first call is estimated at 0.032 USD
    # and costs that much; 0.035 USD leaves too little for a second.
    vlm_server.script(Reply(content=answer_json(), prompt_tokens=4000, completion_tokens=800))
    explainer = make_explainer(daily_budget_usd=0.035, when_budget_spent="hold", hold_retry_s=30)
    first = await explainer.handle(defect_event("f-paid"))
    assert first.document is not None and first.document.source == "vlm"
    held = await explainer.handle(defect_event("f-unpaid"))
    assert held.kind == "held" and held.hold_reason == "budget_spent" and 0 < held.retry_after_s <= 30
    assert len(vlm_server.chat_requests()) == 1


async def test_egress_crop_sends_only_the_crop(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    vlm_server.script(Reply(content=answer_json()))
    explainer = make_explainer(class_egress={"washer": "crop"})
    event = defect_event("f-crop", size=(400, 300), region=(300, 20, 40, 10))
    outcome = await explainer.handle(event)
    (request,) = vlm_server.chat_requests()
    (only,) = request.images()
    width, height = image_size(only)
    assert width < 400 and height < 300  # not the frame, not the overlay
    crop = np.asarray(Image.open(io.BytesIO(only)).convert("RGB"))
    assert (crop[:, :, 0] > 200).sum() > 0.5 * 40 * 10  # the blemish is inside the crop
    assert "Only a crop" in request.texts()[1]
    assert outcome.document is not None and outcome.document.egress == "crop"
    # The HTML kept in the plant still has all three pictures.
    assert outcome.json_path.with_suffix(".html").read_text().count("<img") == 3  # type: ignore[union-attr]


async def test_egress_none_sends_nothing(vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer) -> None:
    outcome = await make_explainer(egress="none").handle(defect_event("f-none"))
    assert outcome.document is not None and outcome.document.fallback_reason == "egress_none"
    assert vlm_server.chat_requests() == []


async def test_endpoint_without_structured_outputs_gets_json_mode() -> None:
    from tests.support.openai_server import FakeOpenAIServer as Server

    with Server(supports_json_schema=False) as server:
        server.script(Reply(content=answer_json()), Reply(content=answer_json()))
        import tempfile
        from pathlib import Path

        from services.explainer.core import build_explainer
        from shared.settings import ExplainerSettings

        with tempfile.TemporaryDirectory() as root:
            settings = ExplainerSettings(
                base_url=server.base_url,
                api_key=API_KEY,
                report_dir=Path(root),
                follow_up_below=0.0,
                backoff_base_s=0.01,
                requests_per_minute=6000,
            )
            explainer = build_explainer(settings)
            outcome = await explainer.handle(defect_event("f-jsonmode"))
            assert outcome.document is not None and outcome.document.source == "vlm"
            refused, accepted = server.requests
            assert refused.body["response_format"]["type"] == "json_schema"
            assert accepted.body["response_format"] == {"type": "json_object"}
            assert '"additionalProperties":false' in accepted.texts()[-1]  # the schema, in the prompt
            await explainer.handle(defect_event("f-jsonmode-2"))  # remembered: no second refusal
            assert [r.body["response_format"]["type"] for r in server.requests] == [
                "json_schema",
                "json_object",
                "json_object",
            ]
            await explainer.aclose()


async def test_low_confidence_gets_one_follow_up(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    vlm_server.script(
        Reply(content=answer_json(confidence=0.3)),
        Reply(content=answer_json(confidence=0.8, severity="severe")),
    )
    outcome = await make_explainer(follow_up_below=0.5).handle(defect_event("f-unsure"))
    doc = outcome.document
    assert (
        doc is not None and doc.follow_up and doc.confidence == 0.8 and doc.findings[0].severity == "severe"
    )
    follow_up = vlm_server.chat_requests()[1].body["messages"]
    assert (
        "confidence is low (0.30)" in follow_up[-1]["content"] and "upper right" in follow_up[-1]["content"]
    )


async def test_stated_location_that_contradicts_the_heatmap_is_flagged(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    vlm_server.script(Reply(content=answer_json(location="lower left")))
    outcome = await make_explainer().handle(defect_event("f-elsewhere"))
    doc = outcome.document
    assert doc is not None and doc.location_disagreement and doc.findings[0].location_agrees is False
    assert "does not match the heatmap" in outcome.json_path.with_suffix(".html").read_text()  # type: ignore[union-attr]


async def test_report_language_korean(vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer) -> None:
    vlm_server.script(Reply(content=answer_json(assessment="표면에 긁힘이 있습니다.")))
    outcome = await make_explainer(language="ko").handle(defect_event("f-ko"))
    (request,) = vlm_server.chat_requests()
    assert "in Korean" in request.body["messages"][0]["content"]
    markdown = outcome.json_path.with_suffix(".md").read_text()  # type: ignore[union-attr]
    assert "검사 보고서" in markdown and "표면에 긁힘이 있습니다." in markdown


async def test_client_error_is_final_and_not_retried(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    vlm_server.script(Reply(status=401, content="bad key"))
    outcome = await make_explainer(structured_outputs=False).handle(defect_event("f-401"))
    assert outcome.document is not None and outcome.document.fallback_reason == "vlm_rejected"
    assert len(vlm_server.chat_requests()) == 1


async def test_no_endpoint_configured_writes_fallback_reports(make_explainer: MakeExplainer) -> None:
    outcome = await make_explainer(base_url=None).handle(defect_event("f-offline"))
    assert outcome.document is not None and outcome.document.fallback_reason == "no_endpoint"
    assert json.loads(outcome.json_path.read_text())["source"] == "fallback"  # type: ignore[union-attr]


async def test_concurrent_duplicates_wait_for_the_original_and_publish_once(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    import asyncio

    from shared.messages.schemas import Report

    vlm_server.script(Reply(content=answer_json(), delay_s=0.2))
    explainer = make_explainer()
    published: list[Report] = []

    async def publish(message: Report, headers: list[tuple[str, bytes]]) -> None:
        assert trace_id in dict(headers)["traceparent"].decode()  # the frame's trace continues
        published.append(message)

    trace_id = "0af7651916cd43dd8448eb211c80319c"
    frame_headers = [("traceparent", f"00-{trace_id}-b7ad6b7169203331-01".encode())]
    event = defect_event("f-race")
    first, second = await asyncio.gather(
        explainer.handle(event, headers=frame_headers, publish=publish),
        explainer.handle(event, headers=frame_headers, publish=publish),
    )
    assert sorted([first.kind, second.kind]) == ["duplicate", "reported"]
    assert first.published and second.published
    assert len(vlm_server.chat_requests()) == 1 and len(published) == 1
    assert published[0].frame_id == "f-race" and published[0].report_path.endswith("f-race.json")
    # A stored report whose message never went out is published on re-delivery, without a call.
    restarted = make_explainer()
    lost = defect_event("f-lost")
    vlm_server.script(Reply(content=answer_json()))
    await restarted.handle(lost)  # written, not published (no publisher)
    again = await restarted.handle(lost, headers=frame_headers, publish=publish)
    assert again.kind == "duplicate" and again.published and published[-1].frame_id == "f-lost"
    assert len(vlm_server.chat_requests()) == 2


async def test_on_shutdown_waiting_events_are_held_not_called(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    import asyncio

    vlm_server.script(Reply(content=answer_json(), delay_s=0.3))
    explainer = make_explainer(max_concurrency=1)
    in_call = asyncio.create_task(explainer.handle(defect_event("f-calling", seed=1)))
    await asyncio.sleep(0.1)
    waiting = asyncio.create_task(explainer.handle(defect_event("f-waiting", seed=2)))
    await asyncio.sleep(0.05)
    explainer.stopping = True
    finished, held = await in_call, await waiting
    assert finished.kind == "reported" and held.kind == "held" and held.hold_reason == "shutdown"
    assert len(vlm_server.chat_requests()) == 1


def test_report_message_round_trips_through_the_codec(tmp_path: Path) -> None:
    facts = read_facts(defect_event("f-msg"), frame_max_side=1024, crop_max_side=512)
    doc = fallback_document(
        facts, vocabulary=["scratch"], language="ko", created_at=facts.verdict.decided_at + 1
    )
    doc.summary = "x" * 10_000  # clipped for the topic; the files keep it whole
    message = report_message(doc, "2023-11-14/line-1/station-1/f-msg.json")
    again = decode(encode(message), Report)
    assert again == message and len(again.summary) == 4096
    assert again.source == "fallback" and again.findings[0].defect_type == "unclassified"
    assert again.confidence is None and again.language == "ko"


STEPS = ("facts", "prompt", "vlm", "report", "store")


async def test_an_events_path_goes_through_each_step_from_the_core_without_round_trips(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    """defect event -> facts -> prompt -> VLM answer -> report -> store: every step module is
    entered from core.py only, and no module of the explainer calls back into one upstream of it."""
    vlm_server.script(Reply(content=answer_json()), Reply(content=answer_json()))
    explainer = make_explainer()
    await explainer.handle(defect_event("f-warm-up"))  # first-call set-up is not part of the path
    package = str(Path(core.__file__).parent)
    calls: set[tuple[str, str]] = set()

    def record(frame: object, event: str, _: object) -> None:
        caller = getattr(frame, "f_back", None)
        if event != "call" or caller is None:
            return
        callee_file, caller_file = frame.f_code.co_filename, caller.f_code.co_filename  # type: ignore[attr-defined]
        if callee_file.startswith(package) and caller_file.startswith(package):
            calls.add((Path(caller_file).stem, Path(callee_file).stem))

    sys.setprofile(record)
    try:
        result = await explainer.handle(defect_event("f-path"))
    finally:
        sys.setprofile(None)
    assert result.document is not None and result.document.source == "vlm"
    edges = {(a, b) for a, b in calls if a != b}
    for step in STEPS:
        assert {a for a, b in edges if b == step} == {"core"}, step
    downstream: dict[str, set[str]] = {}
    for a, b in edges:
        downstream.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in downstream.get(start, ())
        )

    assert [(a, b) for a, b in sorted(edges) if reaches(b, a, {b})] == []  # no call back upstream
