"""One delivery per alert through SIGKILL (issue 9), and the documented start without a webhook
(issue 12): the real ``lineguard alerts`` process, the real broker, a real webhook on localhost.

The webhook is made slow for the second of two alerts that arrive together: the process is killed
while that POST waits for its answer. By then the first alert is delivered but its offset is not
committed (the batch commits after both), the place where a forgetful restart sends it again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from shared.messages.codec import encode
from shared.messages.schemas import AlertEvent
from shared.settings import Settings
from tests.support.messages import alert_event
from tests.support.processes import ServiceProcess, service_env
from tests.support.topics import committed_and_end, produce_together
from tests.support.waiting import wait_until
from tests.support.webhook_server import WebhookServer

pytestmark = pytest.mark.integration


async def publish_together(settings: Settings, *alerts: AlertEvent) -> None:
    await produce_together(settings, "alerts", [encode(alert) for alert in alerts], key=b"st")


def alerts_env(settings: Settings, state_dir: Path, **values: Any) -> dict[str, str]:
    return service_env(
        settings,
        alerts={
            "group_id": f"{settings.topic_prefix}-alerts",
            "state_dir": str(state_dir),
            "retry_initial_s": 0.1,
            "timeout_s": 120,
            **values,
        },
    )


def alert_ids(received: list[tuple[dict[str, str], Any]]) -> list[tuple[str, str]]:
    """(alert id, idempotency key) of every POST the webhook received."""
    return [(body["alert"]["alert_id"], headers["Idempotency-Key"]) for headers, body in received]


async def test_sigkill_during_a_delivery_never_delivers_an_alert_twice(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    now = time.time_ns()
    first = alert_event(f"a1-{uuid.uuid4().hex[:6]}", raised_at=now, station="st-1")
    second = alert_event(f"a2-{uuid.uuid4().hex[:6]}", raised_at=now, station="st-2")
    state = tmp_path / "state"
    with WebhookServer() as hook:
        env = alerts_env(kafka_settings, state, webhook_url=hook.url)
        killed = ServiceProcess(["alerts"], env, tmp_path / "first.log")
        try:
            await killed.wait_for_log("alerts forwarder ready", 60)
            hook.delays.extend([0.0, 120.0])  # the second POST waits (and is killed waiting)
            await publish_together(kafka_settings, first, second)
            await wait_until(lambda: len(hook.received) == 2, 30, "both POSTs")
            committed, end = await committed_and_end(
                kafka_settings, f"{kafka_settings.topic_prefix}-alerts", "alerts"
            )
            assert (committed, end) == (0, 2)  # the first is delivered, nothing committed yet
        finally:
            killed.kill()

        restarted = ServiceProcess(["alerts"], env, tmp_path / "second.log")
        try:
            await wait_until(lambda: len(hook.received) >= 3, 60, "the interrupted POST again")
            await wait_until(lambda: len(hook.requests) >= 2, 30, "the second delivery answered")
            await asyncio.sleep(2.0)  # nothing more may come
            assert await restarted.terminate() == 0
        finally:
            if restarted.process.poll() is None:
                restarted.kill()
        posts = alert_ids(hook.received)
    counts = Counter(alert_id for alert_id, _ in posts)
    assert counts == {first.alert_id: 1, second.alert_id: 2}, posts  # only the interrupted one again
    keys = {alert_id: {key for i, key in posts if i == alert_id} for alert_id in counts}
    assert len(keys[second.alert_id]) == 1  # same Idempotency-Key: a receiver that honours it sees one
    assert await committed_and_end(kafka_settings, f"{kafka_settings.topic_prefix}-alerts", "alerts") == (
        2,
        2,
    )
    for log in ("first.log", "second.log"):
        assert hook.url not in (tmp_path / log).read_text()  # the URL is a secret


async def test_the_documented_compose_start_without_a_webhook_logs_each_alert(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    empty = tmp_path / "alerts_webhook_url"
    empty.write_text("")
    env = alerts_env(kafka_settings, tmp_path / "state", webhook_url_file=str(empty))
    process = ServiceProcess(["alerts"], env, tmp_path / "alerts.log")
    alert = alert_event(f"logged-{uuid.uuid4().hex[:6]}", raised_at=time.time_ns())
    try:
        await process.wait_for_log("alerts forwarder ready", 60)
        assert "no webhook configured" in process.log_text()
        await publish_together(kafka_settings, alert)
        await process.wait_for_log(alert.alert_id, 30)
        assert await process.terminate() == 0
    finally:
        if process.process.poll() is None:
            process.kill()
    log = process.log_text()
    assert log.count(alert.alert_id) == 1 and '"event": "alert"' in log
    assert await committed_and_end(kafka_settings, f"{kafka_settings.topic_prefix}-alerts", "alerts") == (
        1,
        1,
    )
