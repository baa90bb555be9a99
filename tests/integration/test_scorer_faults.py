"""Scorer faults on the real broker (issue 9, findings 1-3): hostile records, a fenced producer, an
output the topic refuses, a rebalance-listener error and a stalled partition. Every frame ends as
exactly one committed verdict or one dead letter, or the scorer fails loudly; none stalls silently."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from services.camera_sim.badframes import oversized_png
from services.camera_sim.service import run_camera_sim
from services.camera_sim.truth import FRAME_ID_HEADER
from services.scorer.core import ScorerFailure
from services.scorer.partitions import transactional_id
from shared.kafka.client import make_admin, make_consumer, make_producer
from shared.limits import DEAD_LETTER_MAX_BYTES, KAFKA_MAX_MESSAGE_BYTES
from shared.messages.codec import encode
from shared.messages.schemas import DeadLetter, Frame, Verdict
from shared.settings import Settings
from shared.synthetic import render_sample
from tests.support.line import IMAGE_SIZE, LineModels, frame_id_of, scorer_settings, sim_options
from tests.support.processes import ServiceProcess, service_env
from tests.support.topics import TopicReader
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST_FAULTS = {  # timeouts small enough for a test, large enough for two loaded cores
    "send_timeout_s": 5.0,
    "commit_timeout_s": 5.0,
    "abort_timeout_s": 3.0,
    "recover_timeout_s": 5.0,
    "score_timeout_s": 10.0,
    "transaction_timeout_ms": 15_000,
}


def _png(image: Image.Image, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _frame(frame_id: str, image: bytes, encoding: str = "png", **fields: Any) -> bytes:
    frame = Frame(
        frame_id=frame_id,
        line_id="line-1",
        station_id="station-1",
        camera_id="cam-1",
        captured_at=time.time_ns(),
        encoding=encoding,
        image=image,
        **fields,
    )
    return encode(frame, validate=False)


def _record_sets() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records that must each get one verdict, records that must each get one dead letter)."""
    rng = np.random.default_rng(7)
    rgb = [render_sample("washer", rng, IMAGE_SIZE)[0] for _ in range(4)]
    gray16 = Image.fromarray(rgb[0][..., 0].astype(np.uint16) * 257)
    palette = Image.fromarray(rgb[1]).convert("P")
    cmyk = io.BytesIO()
    Image.fromarray(rgb[2]).convert("CMYK").save(cmyk, format="JPEG")
    good = [
        {"value": _frame(f"good-{i}", _png(Image.fromarray(a))), "id": f"good-{i}"} for i, a in enumerate(rgb)
    ]
    good += [
        {"value": _frame("png-16-bit", _png(gray16)), "id": "png-16-bit"},
        {"value": _frame("png-palette", _png(palette, transparency=0)), "id": "png-palette"},
        {"value": _frame("jpeg-cmyk", cmyk.getvalue(), "jpeg"), "id": "jpeg-cmyk"},
        # A good frame with hostile metadata: a 2 MiB key and a header without a value.
        {
            "value": _frame("good-odd-meta", _png(Image.fromarray(rgb[3]))),
            "id": "good-odd-meta",
            "key": b"k" * (2 << 20),
            "headers": [("empty", None)],
        },
    ]
    bomb = _png(Image.new("L", (6000, 6000)), optimize=True)  # 36 Mpx of zeros in a few KB
    assert len(bomb) < 200_000
    bad = [
        {
            "id": "over-letter-limit",
            "value": b"\xc1" * (DEAD_LETTER_MAX_BYTES + (256 << 10)),
            "reason": "too_large",
        },
        {"id": "null-header", "value": b"\xc1junk", "headers": [("empty", None)], "reason": "malformed"},
        {"id": "many-headers", "value": b"\xc1junk", "headers": [(f"h{i}", b"v") for i in range(300)]},
        {"id": "huge-key", "value": b"\xc1junk", "key": b"k" * (2 << 20), "reason": "malformed"},
        {"id": "long-side", "value": _frame("long-side", oversized_png(20_000, 1)), "reason": "too_large"},
        {"id": "bomb", "value": _frame("bomb", bomb), "reason": "too_large"},
        {
            "id": "raw-too-wide",
            "value": _frame("raw-too-wide", bytes(16_385), "raw8", width=16_385, height=1),
            "reason": "invalid_field",
        },
        {"id": "no-value", "value": None, "key": b"cam-1", "reason": "malformed"},
    ]
    for record in bad:
        assert len(record["value"] or b"") + len(record.get("key") or b"") < KAFKA_MAX_MESSAGE_BYTES
    return good, bad


async def _produce(settings: Settings, records: list[dict[str, Any]]) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        for i, record in enumerate(records):
            headers = [(FRAME_ID_HEADER, record["id"].encode()), *record.get("headers", [])]
            await producer.send_and_wait(
                settings.topic("frames"),
                record["value"],
                key=record.get("key", b"cam-1"),
                headers=headers,
                partition=i % 2,
            )
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def scorer_task(settings: Settings, model_dir: Path, **service: Any) -> AsyncIterator[Any]:
    """A scorer in this process whose ``run`` is a task the test can watch end."""
    from services.scorer.models import ModelHolder, load_model_dir
    from services.scorer.service import ScorerService

    holder = ModelHolder(await asyncio.to_thread(load_model_dir, model_dir))
    scorer = ScorerService(settings, holder, **service)
    stop = asyncio.Event()
    task = asyncio.create_task(scorer.run(stop))
    scorer.task = task
    try:
        yield scorer
    finally:
        stop.set()
        await asyncio.gather(asyncio.wait_for(task, 60), return_exceptions=True)


async def test_hostile_records_each_end_as_one_dead_letter_and_the_line_goes_on(
    kafka_settings: Settings, line_models: LineModels
) -> None:
    settings = scorer_settings(kafka_settings, **FAST_FAULTS)
    good, bad = _record_sets()
    async with (
        TopicReader(settings, "verdicts", Verdict) as verdicts,
        TopicReader(settings, "dlq", DeadLetter) as dlq,
        scorer_task(settings, line_models.a) as scorer,
    ):
        await _produce(settings, bad + good)  # the hostile ones first: the good ones must still pass
        got = await verdicts.wait_for(len(good), timeout=120)
        letters = await dlq.wait_for(len(bad), timeout=30, settle=1.0)
        assert not scorer.task.done(), scorer.task
        assert scorer.health.report()[0]
    assert Counter(v.frame_id for v in got.values) == Counter(r["id"] for r in good)
    by_id = {frame_id_of(letter.original_headers): letter for letter in letters.values}
    assert len(letters.values) == len(bad) and set(by_id) == {r["id"] for r in bad}, sorted(by_id, key=str)
    for record in bad:
        letter = by_id[record["id"]]
        if "reason" in record:
            assert letter.reason == record["reason"], (record["id"], letter.detail)
        assert letter.original_value_size == len(record["value"] or b"")
    assert by_id["over-letter-limit"].truncated and len(by_id["over-letter-limit"].original_value) < (
        16 << 20
    )
    assert by_id["many-headers"].truncated and by_id["many-headers"].original_header_count == 301
    assert by_id["huge-key"].truncated and by_id["huge-key"].original_key_size == 2 << 20
    assert ("empty", None) in by_id["null-header"].original_headers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthz(port: int) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_a_fenced_producer_is_recovered_and_every_frame_still_gets_one_verdict(
    kafka_settings: Settings, line_models: LineModels, tmp_path: Path
) -> None:
    """Another producer takes the partitions' transactional ids mid-stream (a zombie, or the broker
    aborting a timed-out transaction): the scorer process recovers both partitions and goes on."""
    settings = scorer_settings(kafka_settings, **FAST_FAULTS)
    port = _free_port()
    options = sim_options(count=60, cameras=2, rate=12.0, bad_rate=0.0, run_id="fence")
    environment = {**service_env(settings, "scorer"), "LINEGUARD_METRICS_PORT": str(port)}
    scorer = ServiceProcess(["scorer", "--model", str(line_models.a)], environment, tmp_path / "scorer.log")
    try:
        async with TopicReader(settings, "verdicts", Verdict) as verdicts:
            await scorer.wait_for_log("partitions_assigned", 120)
            await wait_until(lambda: _healthz(port)[0] == 200, 30, "/healthz to say ok")
            sender = asyncio.create_task(run_camera_sim(settings, options))
            await wait_until(lambda: len(verdicts) >= 10, 60, "the first verdicts")
            for partition in (0, 1):  # fence both partitions' producers
                fencer = make_producer(
                    settings,
                    transactional_id=transactional_id(
                        settings.scorer.transactional_id_prefix, settings.topic("frames"), partition
                    ),
                )
                await fencer.start()
                await fencer.stop()
            stats = await sender
            got = await verdicts.wait_for(stats.sent, timeout=120, settle=2.0)
            await scorer.wait_for_log("partition_recovered", 10)
            assert _healthz(port) == (200, {"status": "ok", "detail": ""})
            assert await scorer.terminate() == 0
    finally:
        scorer.kill()
    assert Counter(v.frame_id for v in got.values) == Counter(f"fence-{i:07d}" for i in range(60))


async def _set_topic_config(settings: Settings, topic: str, config: dict[str, str]) -> None:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = make_admin(settings)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, settings.topic(topic), configs=config)]
        )
    finally:
        await admin.close()


async def _committed_offsets(settings: Settings) -> dict[int, int | None]:
    from aiokafka import TopicPartition

    consumer = make_consumer(settings, group_id=settings.scorer.group_id)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(settings.topic("frames"), p)) for p in (0, 1)}
    finally:
        await consumer.stop()


async def test_an_output_the_topic_refuses_is_never_committed_away(
    kafka_settings: Settings, line_models: LineModels
) -> None:
    """The verdicts topic accepts at most 200 bytes, less than any verdict: no offset may commit
    without its frame's output, so every frame becomes a dead letter saying why."""
    settings = scorer_settings(kafka_settings, **FAST_FAULTS)
    await _set_topic_config(settings, "verdicts", {"max.message.bytes": "200"})
    rng = np.random.default_rng(3)
    frames = [
        {
            "id": f"refused-{i}",
            "value": _frame(
                f"refused-{i}", _png(Image.fromarray(render_sample("washer", rng, IMAGE_SIZE)[0]))
            ),
        }
        for i in range(6)
    ]
    async with (
        TopicReader(settings, "verdicts", Verdict) as verdicts,
        TopicReader(settings, "dlq", DeadLetter) as dlq,
        scorer_task(settings, line_models.a) as scorer,
    ):
        await _produce(settings, frames)
        letters = await dlq.wait_for(len(frames), timeout=120, settle=2.0)
        assert not scorer.task.done()
        assert len(verdicts) == 0
    assert Counter(frame_id_of(letter.original_headers) for letter in letters.values) == Counter(
        r["id"] for r in frames
    )
    for letter in letters.values:
        assert letter.reason == "output_rejected" and "verdicts topic refused the verdict" in letter.detail
    assert await _committed_offsets(settings) == {0: 3, 1: 3}


async def _ends_failed(scorer: Any, reason: str, stuck: str) -> None:
    """The scorer's task ends within 90 s, raising ``ScorerFailure`` (matching ``reason``), and its
    health says failed; ``stuck`` says what it did instead when it does not end."""
    done, _ = await asyncio.wait({scorer.task}, timeout=90)
    assert done, stuck
    with pytest.raises(ScorerFailure, match=reason):
        scorer.task.result()
    healthy, body = scorer.health.report()
    assert not healthy and body["status"] == "failed"


async def test_a_rebalance_listener_error_ends_the_scorer_instead_of_stalling_it(
    kafka_settings: Settings, line_models: LineModels
) -> None:
    """Partition producers that cannot start (their broker unreachable): aiokafka would swallow the
    listener's error and leave intake waiting forever; the scorer must fail and leave the group."""
    settings = scorer_settings(kafka_settings, **FAST_FAULTS)
    unreachable = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{_free_port()}"})

    def producer_elsewhere(_: Settings, **options: Any) -> Any:
        return make_producer(unreachable, request_timeout_ms=2000, **options)

    async with scorer_task(settings, line_models.a, make_producer=producer_elsewhere) as scorer:
        await _ends_failed(scorer, "partitions assigned", "the scorer sat with a failed rebalance")


async def test_a_partition_that_stops_making_progress_fails_the_scorer(
    kafka_settings: Settings, line_models: LineModels
) -> None:
    """A partition paused with frames waiting (what a dropped partition used to be): the watchdog
    turns health red and the scorer fails instead of sitting green forever."""
    settings = scorer_settings(kafka_settings, **{**FAST_FAULTS, "progress_timeout_s": 40.0})
    async with scorer_task(settings, line_models.a) as scorer:
        await wait_until(
            lambda: scorer.partitions is not None and not scorer.partitions.paused, 60, "the assignment"
        )
        scorer.consumer.pause(*scorer.consumer.assignment())
        started = time.monotonic()
        await run_camera_sim(settings, sim_options(count=4, cameras=2, rate=20.0, run_id="stall"))
        await _ends_failed(scorer, "no progress", "the scorer stayed up without progress")
        assert time.monotonic() - started >= 30


async def test_a_backlog_on_one_partition_does_not_starve_the_others(
    kafka_settings: Settings, line_models: LineModels
) -> None:
    """Found by the fuzz campaign: with a backlog, the consumer buffers a whole fetch per partition
    (up to a maximal record's size, thousands of small frames) and hands out one partition's buffer
    before the next. Drained eight at a time, the second partition waited minutes, long enough for
    the progress watchdog to fail a healthy scorer. Batches must take turns between partitions."""
    settings = scorer_settings(kafka_settings, **FAST_FAULTS)
    rng = np.random.default_rng(11)
    image = _png(Image.fromarray(render_sample("washer", rng, IMAGE_SIZE)[0]))
    per_partition = 300
    producer = make_producer(settings, linger_ms=20)
    await producer.start()
    try:
        sends = [
            await producer.send(
                settings.topic("frames"),
                _frame(f"p{p}-{i}", image),
                key=b"cam-1",
                headers=[(FRAME_ID_HEADER, f"p{p}-{i}".encode())],
                partition=p,
            )
            for i in range(per_partition)
            for p in (0, 1)
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    async with (
        TopicReader(settings, "verdicts", Verdict) as verdicts,
        scorer_task(settings, line_models.a) as scorer,
    ):
        got = await verdicts.wait_for(2 * per_partition, timeout=240, settle=0.5)
        assert not scorer.task.done(), scorer.task
    order = [v.frame_id.split("-")[0] for v in got.values]
    assert Counter(order) == {"p0": per_partition, "p1": per_partition}
    first_quarter = Counter(order[: per_partition // 2])
    assert min(first_quarter["p0"], first_quarter["p1"]) >= per_partition // 10, first_quarter
