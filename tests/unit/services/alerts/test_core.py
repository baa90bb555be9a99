"""Alert forwarding logic: de-duplication, rate limit and digests, retry timing, payloads, HTTP."""

from __future__ import annotations

import json

import pytest

from services.alerts.core import Admission, Forwarder, RetryPolicy, TokenBucket, log_fields, payload
from services.alerts.webhook import post_json
from shared.messages.schemas import AlertEvent
from shared.settings import WebhookFormat
from tests.support.messages import alert_event
from tests.support.webhook_server import WebhookServer

S = 1_000_000_000


def alert(n: int, *, kind: str = "consecutive_rejects", station: str = "st-1", t: float = 0.0) -> AlertEvent:
    return alert_event(
        f"a{n}", raised_at=int(t * S), station=station, kind=kind, frame_ids=[f"f{i}" for i in range(8)]
    )


def test_duplicates_inside_the_window_are_suppressed():
    fw = Forwarder(dedup_window_s=60, per_minute=600, burst=10, now=0)
    assert fw.admit(alert(1, t=0), 0) is Admission.SEND
    assert fw.admit(alert(2, t=30), 0) is Admission.DUPLICATE  # same kind/station within 60 s
    assert fw.admit(alert(3, station="st-2", t=30), 0) is Admission.SEND
    assert fw.admit(alert(4, kind="unknown_product", t=30), 0) is Admission.SEND
    assert fw.admit(alert(5, t=61), 0) is Admission.SEND  # window passed
    # A re-delivered alert id is the delivery ledger's to catch (test_ledger.py), across restarts.


def test_rate_limit_holds_alerts_for_one_digest():
    fw = Forwarder(dedup_window_s=0, per_minute=60, burst=2, now=0)
    got = [fw.admit(alert(i, station=f"s{i}"), 0) for i in range(5)]
    assert got == [Admission.SEND, Admission.SEND, Admission.HELD, Admission.HELD, Admission.HELD]
    assert fw.digest_wait_s(0) == pytest.approx(1.0)
    assert fw.take_digest(0.5) == []
    digest = fw.take_digest(1.0)
    assert [a.alert_id for a in digest] == ["a2", "a3", "a4"]
    assert fw.digest_wait_s(1.0) is None
    # While a digest is pending, new alerts join it rather than jumping the queue.
    fw2 = Forwarder(dedup_window_s=0, per_minute=60, burst=1, now=0)
    fw2.admit(alert(1, station="a"), 0)
    fw2.admit(alert(2, station="b"), 0)
    assert fw2.admit(alert(3, station="c"), 5.0) is Admission.HELD


def test_token_bucket_refills_to_capacity():
    bucket = TokenBucket(per_minute=120, burst=3, now=0)
    assert [bucket.take(0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_s(0) == pytest.approx(0.5)
    assert bucket.take(100) and bucket.tokens == pytest.approx(2.0)


def test_retry_policy_backs_off_and_honours_retry_after():
    policy = RetryPolicy(initial_s=0.5, max_s=10, give_up_after_s=60)
    assert [policy.delay(n) for n in (1, 2, 3, 6)] == [0.5, 1.0, 2.0, 10]
    assert policy.delay(1, retry_after_s=3) == 3
    assert policy.delay(1, retry_after_s=999) == 10


def test_payload_formats():
    one = alert(1)
    generic = payload([one], WebhookFormat.JSON)
    assert generic["alert"]["alert_id"] == "a1" and generic["text"].startswith("[CRITICAL]")
    slack = payload([one], WebhookFormat.SLACK)
    assert slack["text"] and slack["blocks"][0]["type"] == "section"
    assert "*station*: st-1" in slack["blocks"][1]["text"]["text"]
    assert "(+3 more)" in slack["blocks"][1]["text"]["text"]  # 8 frames, 5 shown
    teams = payload([one], WebhookFormat.TEAMS)
    card = teams["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["content"]["type"] == "AdaptiveCard"
    assert {"title": "station", "value": "st-1"} in card["content"]["body"][1]["facts"]
    digest = payload([alert(1), alert(2, station="st-2")], WebhookFormat.JSON)
    assert len(digest["digest"]) == 2 and digest["text"].startswith("2 alerts held back")
    for body in (generic, slack, teams, digest):
        json.dumps(body)  # serialisable as is
    with pytest.raises(ValueError):
        payload([], WebhookFormat.JSON)


def test_post_json_classifies_answers_from_a_real_server():
    with WebhookServer() as server:
        server.script.extend([(503, {}), (429, {"Retry-After": "7"}), (400, {})])
        first = post_json(server.url, {"a": 1}, 2.0)
        assert (first.ok, first.retryable, first.status) == (False, True, 503)
        second = post_json(server.url, {"a": 1}, 2.0)
        assert second.retryable and second.retry_after_s == 7.0
        third = post_json(server.url, {"a": 1}, 2.0)
        assert (third.ok, third.retryable, third.status) == (False, False, 400)
        ok = post_json(server.url, {"a": 1}, 2.0, headers={"Idempotency-Key": "k"})
        assert ok.ok and server.delivered() == [{"a": 1}] and server.headers[0]["Idempotency-Key"] == "k"
        url = server.url
    down = post_json(url, {"a": 1}, 1.0)  # server gone: no answer, retry later
    assert (down.ok, down.retryable, down.status) == (False, True, None)


def test_an_alert_logged_without_a_webhook_names_its_frames_by_count():
    alert = alert_event("a1", raised_at=1, frame_ids=("f1", "f2", "f3"))
    assert log_fields(alert) == {
        "alert_id": "a1",
        "kind": "consecutive_rejects",
        "severity": "critical",
        "line_id": "line-1",
        "station_id": "st-1",
        "product_class": "washer",
        "summary": alert.summary,
        "frames": 3,
    }
