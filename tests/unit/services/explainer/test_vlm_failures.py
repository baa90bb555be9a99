"""Every way an OpenAI-compatible endpoint can misbehave ends in a report, within the hold limit.

Against the real HTTP server on localhost (tests/support/openai_server.py), each failure mode must
end in a VLM report or a marked fallback report, be metered (``vlm_requests_total{outcome}``), and
leave the circuit breaker able to close again: a half-open trial always ends, whatever happened
to it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from services.explainer import metrics
from services.explainer.controls import BreakerState
from services.explainer.core import Explainer
from shared.kafka.broker import free_port
from tests.support.messages import defect_event
from tests.support.openai_server import FakeOpenAIServer, Reply
from tests.support.reports import answer_json

MakeExplainer = Callable[..., Explainer]

HTML_PAGE = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
TRUNCATED = b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "mess'


def requests_with(outcome: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value("lineguard_explainer_vlm_requests_total", {"outcome": outcome})
        or 0.0
    )


# Each answer that is not a usable completion, as the endpoint sends it.
BAD_RESPONSES = {
    "non_json_200_html": Reply(raw_body=HTML_PAGE, content_type="text/html"),
    "non_json_200_claiming_json": Reply(raw_body=b"upstream timed out", content_type="application/json"),
    "truncated_json": Reply(raw_body=TRUNCATED),
    "json_not_a_completion": Reply(raw_body=b'{"object": "error", "detail": "overloaded"}'),
    "choices_not_a_list": Reply(raw_body=b'{"id": "x", "object": "chat.completion", "choices": "none"}'),
    "json_array": Reply(raw_body=b"[1, 2, 3]"),
    "empty_choices": Reply(choices=[]),
    "choice_without_message": Reply(choices=[{"index": 0, "finish_reason": "stop"}]),
}


@pytest.mark.parametrize("name", sorted(BAD_RESPONSES))
async def test_a_200_that_is_not_a_completion_is_a_metered_failure_then_a_retry(
    name: str, vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    before = requests_with("bad_response")
    vlm_server.script(BAD_RESPONSES[name], Reply(content=answer_json()))
    explainer = make_explainer(when_endpoint_down="fallback", max_attempts=2)
    outcome = await explainer.handle(defect_event(f"f-{name}"))
    assert outcome.kind == "reported" and outcome.document is not None
    assert outcome.document.source == "vlm"  # the second attempt answered
    assert len(vlm_server.chat_requests()) == 2
    assert requests_with("bad_response") == before + 1
    assert explainer.vlm is not None and explainer.vlm.breaker.state is BreakerState.CLOSED


@pytest.mark.parametrize("name", sorted(BAD_RESPONSES))
async def test_a_bad_200_every_time_ends_in_a_fallback_report(
    name: str, vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    vlm_server.script(*[BAD_RESPONSES[name]] * 2)
    explainer = make_explainer(when_endpoint_down="fallback", max_attempts=2, breaker_failures=10)
    outcome = await explainer.handle(defect_event(f"f-bad-{name}"))
    doc = outcome.document
    assert outcome.kind == "reported" and doc is not None
    assert doc.source == "fallback" and doc.fallback_reason == "endpoint_down"
    assert explainer.vlm is not None and explainer.vlm.breaker.failures == 2


async def test_a_huge_body_is_refused_without_reading_it(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    huge = b'{"id": "x", "choices": [], "pad": "' + b"x" * (24 << 20) + b'"}'
    vlm_server.script(Reply(raw_body=huge), Reply(content=answer_json()))
    before = requests_with("bad_response")
    explainer = make_explainer(when_endpoint_down="fallback", max_attempts=2, max_response_bytes=1 << 20)
    started = time.monotonic()
    outcome = await explainer.handle(defect_event("f-huge"))
    assert outcome.document is not None and outcome.document.source == "vlm"
    assert requests_with("bad_response") == before + 1
    assert time.monotonic() - started < 10


async def test_connection_refused_is_a_metered_failure(make_explainer: MakeExplainer) -> None:
    before = requests_with("connection_error")
    explainer = make_explainer(
        base_url=f"http://127.0.0.1:{free_port()}/v1", when_endpoint_down="fallback", max_attempts=2
    )
    outcome = await explainer.handle(defect_event("f-refused"))
    assert outcome.document is not None and outcome.document.fallback_reason == "endpoint_down"
    assert requests_with("connection_error") == before + 2


async def test_a_dropped_connection_is_a_metered_failure(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    vlm_server.script(Reply(drop=True), Reply(content=answer_json()))
    before = requests_with("connection_error")
    outcome = await make_explainer(max_attempts=2).handle(defect_event("f-dropped"))
    assert outcome.document is not None and outcome.document.source == "vlm"
    assert requests_with("connection_error") == before + 1


async def test_a_refusal_is_final_and_reported_as_such(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    vlm_server.script(Reply(content=None, refusal="I can't help with that."))
    explainer = make_explainer(when_endpoint_down="hold")
    outcome = await explainer.handle(defect_event("f-refusal"))
    doc = outcome.document
    assert outcome.kind == "reported" and doc is not None
    assert doc.source == "fallback" and doc.fallback_reason == "vlm_refused"
    assert len(vlm_server.chat_requests()) == 1  # no repair, no retry: the model said no
    assert doc.vlm_calls == 1 and doc.cost_usd > 0  # it answered, so it was charged
    assert explainer.vlm is not None and explainer.vlm.breaker.state is BreakerState.CLOSED


@pytest.mark.parametrize(
    ("status", "reason"),
    [(400, "vlm_rejected"), (401, "vlm_rejected"), (404, "vlm_rejected"), (413, "vlm_rejected")],
)
async def test_client_errors_are_final(
    status: int, reason: str, vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    vlm_server.script(Reply(status=status, content="no"))
    explainer = make_explainer(structured_outputs=False, when_endpoint_down="hold")
    outcome = await explainer.handle(defect_event(f"f-{status}"))
    assert outcome.document is not None and outcome.document.fallback_reason == reason
    assert len(vlm_server.chat_requests()) == 1


async def test_retry_after_is_honoured_but_never_beyond_the_backoff_cap(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    vlm_server.script(
        Reply(status=429, headers={"Retry-After": "0.3"}),
        Reply(status=503, headers={"Retry-After": "3600"}),  # capped at backoff_max_s
        Reply(status=429, headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}),  # a date: our backoff
        Reply(content=answer_json()),
    )
    explainer = make_explainer(max_attempts=4, backoff_max_s=0.5)
    started = time.monotonic()
    outcome = await explainer.handle(defect_event("f-retry-after"))
    elapsed = time.monotonic() - started
    assert outcome.document is not None and outcome.document.source == "vlm"
    assert 0.3 <= elapsed < 5


async def test_the_half_open_trial_that_gets_a_bad_200_reopens_and_the_breaker_recovers(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    """The wedge of issue 9: a non-JSON 200 on the half-open trial left the breaker half-open with
    its trial 'in flight' forever, so no request went out again once the endpoint was healthy."""
    explainer = make_explainer(
        when_endpoint_down="fallback", max_attempts=1, breaker_failures=1, breaker_reset_s=0.2
    )
    assert explainer.vlm is not None
    breaker = explainer.vlm.breaker
    first = await explainer.handle(defect_event("f-trip"))  # 500: the breaker opens
    assert first.document is not None and breaker.state is BreakerState.OPEN
    await asyncio.sleep(0.25)
    vlm_server.script(Reply(raw_body=HTML_PAGE, content_type="text/html"))  # the trial gets garbage
    trial = await explainer.handle(defect_event("f-trial"))
    assert trial.document is not None and trial.document.fallback_reason == "endpoint_down"
    assert breaker.state is BreakerState.OPEN  # the trial failed: open again, not stuck half-open
    await asyncio.sleep(0.25)
    vlm_server.script(Reply(content=answer_json()))  # healthy again
    healed = await explainer.handle(defect_event("f-healed"))
    assert healed.document is not None and healed.document.source == "vlm"
    assert breaker.state is BreakerState.CLOSED
    assert len(vlm_server.chat_requests()) == 3


async def test_a_cancelled_half_open_trial_does_not_wedge_the_breaker(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    explainer = make_explainer(
        when_endpoint_down="fallback", max_attempts=1, breaker_failures=1, breaker_reset_s=0.2
    )
    assert explainer.vlm is not None
    breaker = explainer.vlm.breaker
    await explainer.handle(defect_event("f-trip-2"))
    await asyncio.sleep(0.25)
    vlm_server.script(Reply(content=answer_json(), delay_s=5))
    trial = asyncio.create_task(explainer.handle(defect_event("f-cancelled")))
    await asyncio.sleep(0.3)
    assert breaker.state is BreakerState.HALF_OPEN
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    vlm_server.script(Reply(content=answer_json()))
    after = await explainer.handle(defect_event("f-after-cancel"))
    assert after.document is not None and after.document.source == "vlm"
    assert breaker.state is BreakerState.CLOSED


async def test_a_slow_endpoint_gets_a_fallback_within_the_hold_limit(
    vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    vlm_server.script(*[Reply(content=answer_json(), delay_s=3)] * 4)
    explainer = make_explainer(when_endpoint_down="hold", request_timeout_s=30, max_hold_s=1.0)
    started = time.monotonic()
    outcome = await explainer.handle(defect_event("f-slow"))
    assert time.monotonic() - started < 2.5
    doc = outcome.document
    assert outcome.kind == "reported" and doc is not None
    assert doc.source == "fallback" and doc.fallback_reason == "hold_limit"
    assert explainer.vlm is not None and explainer.vlm.breaker.state is not BreakerState.HALF_OPEN


@pytest.mark.parametrize("name", ["non_json_200_html", "truncated_json", "empty_choices"])
async def test_held_for_a_bad_200_then_past_the_hold_limit_a_fallback(
    name: str, vlm_server: FakeOpenAIServer, make_explainer: MakeExplainer
) -> None:
    """Issue 9: with the endpoint answering garbage and policy ``hold``, the event is held and
    retried, and once held past ``max_hold_s`` it gets its fallback report."""
    vlm_server.script(*[BAD_RESPONSES[name]] * 4)
    explainer = make_explainer(when_endpoint_down="hold", max_attempts=2, max_hold_s=20, breaker_failures=10)
    event = defect_event(f"f-held-{name}")
    held = await explainer.handle(event)
    assert held.kind == "held" and held.hold_reason == "endpoint_down"
    calls = len(vlm_server.chat_requests())
    late = await explainer.handle(event, first_seen=explainer.clock() - 21)
    assert late.kind == "reported" and late.document is not None
    assert late.document.fallback_reason == "hold_limit"
    assert len(vlm_server.chat_requests()) == calls  # due now: no further call
