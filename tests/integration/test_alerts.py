"""``lineguard alerts`` on the real broker, delivering to a real HTTP server on localhost."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from services.alerts.service import AlertsService
from services.alerts.webhook import post_json
from shared.kafka.broker import free_port
from shared.kafka.client import make_producer
from shared.messages.codec import decode, encode
from shared.messages.schemas import AlertEvent, DeadLetter
from shared.settings import AlertsSettings, Settings, WebhookFormat
from tests.support.messages import alert_event
from tests.support.services import running_service
from tests.support.topics import committed_and_end, produce_together, read_messages
from tests.support.waiting import wait_until
from tests.support.webhook_server import WebhookServer

pytestmark = pytest.mark.integration


def alert(n: int, station: str, *, kind: str = "consecutive_rejects", dt_s: float = 0.0) -> AlertEvent:
    alert_id = f"{uuid.uuid4().hex[:6]}-{n}"
    return alert_event(alert_id, raised_at=time.time_ns() + int(dt_s * 1e9), station=station, kind=kind)


def alerts_settings(base: Settings, **fields: Any) -> Settings:
    fields.setdefault("retry_initial_s", 0.05)
    fields.setdefault("retry_max_s", 0.2)
    fields.setdefault("state_dir", Path(tempfile.mkdtemp(prefix="alerts-ledger-")))  # one per test
    return base.model_copy(
        update={"alerts": AlertsSettings(group_id=f"alerts-{uuid.uuid4().hex[:8]}", **fields)}
    )


async def publish(settings: Settings, *values: AlertEvent | bytes) -> None:
    async with make_producer(settings) as producer:
        for value in values:
            data = value if isinstance(value, bytes) else encode(value)
            await producer.send_and_wait(settings.topic("alerts"), data, key=b"st")


async def publish_together(settings: Settings, *values: AlertEvent | bytes) -> None:
    """All in one record batch, so the service consumes them in one fetch: no commit or broker
    hiccup between them can refill the rate limiter's bucket."""
    data = [value if isinstance(value, bytes) else encode(value) for value in values]
    await produce_together(settings, "alerts", data, key=b"st")


async def test_retries_dedup_and_rate_limit_deliver_every_alert_once(kafka_settings: Settings) -> None:
    settings = alerts_settings(
        kafka_settings,
        webhook_format=WebhookFormat.SLACK,
        # One token per 5 s, and all alerts arrive in one fetch (publish_together): the two
        # direct sends use the burst and st-3, st-4 are held for the digest every time.
        rate_limit_per_minute=12,
        rate_limit_burst=2,
        dedup_window_s=60,
    )
    first, repeat = alert(1, "st-1"), alert(2, "st-1", dt_s=1)
    others = [alert(3, "st-2"), alert(4, "st-3"), alert(5, "st-4")]
    with WebhookServer() as server:
        server.script.extend([(500, {}), (429, {"Retry-After": "0.1"})])  # two failures, then 200
        async with running_service(AlertsService(settings, server.url)):
            await publish_together(settings, first, repeat, b"\xc1 not an alert", *others)
            await wait_until(lambda: len(server.delivered()) >= 3)
            await asyncio.sleep(0.5)  # nothing more arrives
        bodies = server.delivered()
    assert len(bodies) == 3
    assert first.station_id in bodies[0]["text"] and "blocks" in bodies[0]  # after two retries
    assert "st-2" in bodies[1]["text"]
    assert bodies[2]["text"].startswith("2 alerts held back") and "st-3" in bodies[2]["text"]
    assert all("st-1" not in b["text"] for b in bodies[1:])  # the repeat was suppressed
    (letter,) = await read_messages(settings, "dlq", DeadLetter, 1, timeout_s=15)
    assert letter.original_value == b"\xc1 not an alert" and letter.service == "alerts"
    committed, end = await committed_and_end(settings, settings.alerts.group_id, "alerts")
    assert committed == end == 6


async def test_undeliverable_alerts_go_to_the_dlq_and_are_committed(kafka_settings: Settings) -> None:
    settings = alerts_settings(kafka_settings, give_up_after_s=0.6)
    refused, unreachable = alert(1, "st-1"), alert(2, "st-2")
    with WebhookServer() as server:
        server.script.append((400, {}))  # a permanent refusal: no retry
        server.default_status = 503  # then the endpoint is down for good
        async with running_service(AlertsService(settings, server.url)):
            await publish(settings, refused, unreachable)
            letters = await read_messages(settings, "dlq", DeadLetter, 2, timeout_s=15)
    assert [(d.reason, decode(d.original_value, AlertEvent)) for d in letters] == [
        ("webhook_rejected", refused),
        ("webhook_unreachable", unreachable),
    ]
    assert "HTTP 503" in letters[1].detail
    committed, end = await committed_and_end(settings, settings.alerts.group_id, "alerts")
    assert committed == end == 2


async def test_an_alert_pending_at_stop_is_delivered_after_restart(kafka_settings: Settings) -> None:
    settings = alerts_settings(kafka_settings, give_up_after_s=600)
    attempts = 0

    def counting_post(*args: Any) -> Any:
        nonlocal attempts
        attempts += 1
        return post_json(*args)

    dead_url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    pending = alert(1, "st-1")
    async with running_service(AlertsService(settings, dead_url, poster=counting_post)):
        await publish(settings, pending)
        await wait_until(lambda: attempts >= 2)
    committed, end = await committed_and_end(settings, settings.alerts.group_id, "alerts")
    assert end == 1 and committed == 0  # not delivered, not committed

    with WebhookServer() as server:
        async with running_service(AlertsService(settings, server.url)):
            await wait_until(lambda: len(server.delivered()) == 1)
        assert server.delivered()[0]["alert"]["alert_id"] == pending.alert_id
    committed, end = await committed_and_end(settings, settings.alerts.group_id, "alerts")
    assert committed == end == 1
