"""Progress, not liveness (issue 9, finding 2): the watchdog behind /healthz."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

from services.scorer.watchdog import Health, ProgressWatchdog
from shared.telemetry.metrics import start_metrics_server


def test_a_partition_with_records_waiting_and_no_progress_stalls() -> None:
    dog = ProgressWatchdog(timeout_s=10)
    for t in range(0, 30, 5):  # 100 records behind, position never moves
        dog.observe("p0", float(t), end=100, position=0, committed=0, fetched=0)
    (stall,) = dog.stalls(30.0)
    assert stall.kind == "partition" and stall.what == "p0" and stall.seconds >= 10


def test_progress_resets_the_clock() -> None:
    dog = ProgressWatchdog(timeout_s=10)
    for t in range(0, 60, 5):  # slow but moving
        dog.observe("p0", float(t), end=1000, position=t, committed=t, fetched=t)
    assert dog.stalls(60.0) == []


def test_records_fetched_but_never_committed_stall_too() -> None:
    dog = ProgressWatchdog(timeout_s=10)
    for t in range(0, 25, 5):  # fetched up to 8, position at the end, nothing committed
        dog.observe("p0", float(t), end=8, position=8, committed=0, fetched=8)
    assert [s.kind for s in dog.stalls(25.0)] == ["partition"]


def test_an_idle_partition_never_stalls_even_behind_a_transaction_marker() -> None:
    dog = ProgressWatchdog(timeout_s=10)
    for t in range(0, 100, 5):
        # Committed up to 7; the commit marker sits at offset 7, so the end is 8 and so is the position.
        dog.observe("p0", float(t), end=8, position=8, committed=7, fetched=7)
        dog.observe("p1", float(t), end=None, position=None, committed=0, fetched=0)  # nothing known
    assert dog.stalls(100.0) == []


def test_forgotten_partitions_and_loops_and_rebalances() -> None:
    dog = ProgressWatchdog(timeout_s=10)
    dog.observe("p0", 0.0, end=5, position=0, committed=0, fetched=0)
    dog.keep_only(set())
    dog.beat("intake", 0.0)
    stalls = dog.stalls(20.0, paused_since=5.0)
    assert sorted(s.kind for s in stalls) == ["intake", "rebalance"]
    dog.beat("intake", 19.0)
    assert dog.stalls(20.0) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_healthz_is_200_only_while_making_progress() -> None:
    from services.scorer import metrics

    health = Health()
    port = _free_port()
    start_metrics_server(port, metrics.REGISTRY, addr="127.0.0.1", health=health.report)
    url = f"http://127.0.0.1:{port}"

    def get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(url + path, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    status, body = get("/healthz")
    assert status == 503 and json.loads(body)["status"] == "starting"
    health.set("ok")
    assert get("/healthz")[0] == 200
    health.set("stalled", "partition 3: 130 s")
    status, body = get("/healthz")
    assert status == 503 and json.loads(body) == {"status": "stalled", "detail": "partition 3: 130 s"}
    health.set("failed", "gone")
    health.set("ok")  # a failing scorer does not turn green again: it exits
    assert get("/healthz")[0] == 503
    status, body = get("/metrics")
    assert status == 200 and b"lineguard_scorer_healthy" in body
