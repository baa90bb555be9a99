"""The camera simulator's async shell: publish frames to the ``frames`` topic at a steady rate.

The plan (which sample, which camera, which bad frame) comes from ``core.py``; this module only
paces it on the event loop's clock, encodes, sends and records the ground truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import IO, Any

from services.camera_sim.core import SimOptions, SimStats, load_samples
from shared.errors import ConfigError

log = logging.getLogger("lineguard.camera_sim")


async def run_camera_sim(settings: Any, options: SimOptions, stop: asyncio.Event | None = None) -> SimStats:
    """Send the planned frames; returns when all are delivered or ``stop`` is set."""
    import numpy as np
    from opentelemetry import trace

    from services.camera_sim.badframes import bad_record_value
    from services.camera_sim.core import BAD_KINDS, camera_ids, frame_plan, tick_time
    from services.camera_sim.images import sample_image
    from services.camera_sim.truth import FRAME_ID_HEADER, TruthRecord, write_truth_line
    from shared.frames_store import ClaimStore, goes_by_reference
    from shared.kafka.client import make_producer
    from shared.messages.codec import encode
    from shared.messages.schemas import Frame
    from shared.telemetry.logging import log_event
    from shared.telemetry.tracing import get_tracer, inject_headers, set_messaging_attributes

    if options.rate <= 0:
        raise ConfigError("--rate must be positive")
    stop = stop or asyncio.Event()
    samples = load_samples(options)
    cameras = camera_ids(settings.camera_sim.camera_id, options.cameras)
    # Encode every sample before the clock starts, so pacing is not disturbed by rendering.
    images = await asyncio.to_thread(
        lambda: [
            sample_image(
                s,
                options.size,
                frame_size=options.frame_size,
                encoding=options.encoding,
                jpeg_quality=options.jpeg_quality,
            )
            for s in samples
        ]
    )
    raw_size = options.frame_size or (options.size, options.size)  # raw8 frames carry their size
    plan = frame_plan(
        len(samples),
        count=options.count,
        cameras=cameras,
        bad_rate=options.bad_rate,
        bad_kinds=tuple(options.bad_kinds) or BAD_KINDS,
        seed=options.seed,
        run_id=options.run_id,
    )
    rng = np.random.default_rng(options.seed + 1)
    tracer = get_tracer("lineguard.camera_sim")
    topic = settings.topic("frames")
    sim = settings.camera_sim
    stats = SimStats(by_kind={})
    claims = ClaimStore.from_settings(settings)  # frames over the inline limit go by reference
    truth_file: IO[str] | None = open(options.truth, "w", encoding="utf-8") if options.truth else None  # noqa: SIM115
    producer = make_producer(settings, linger_ms=5)
    await producer.start()
    in_flight: set[asyncio.Future[Any]] = set()
    log_event(
        log,
        "camera_sim_started",
        topic=topic,
        samples=len(samples),
        cameras=len(cameras),
        rate_per_camera=options.rate,
        count=options.count,
        bad_rate=options.bad_rate,
    )
    try:
        loop = asyncio.get_running_loop()
        total_rate = options.rate * len(cameras)
        stats.started = start = loop.time()
        for planned in plan:
            delay = tick_time(start, planned.seq, total_rate) - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            else:
                stats.max_behind_s = max(stats.max_behind_s, -delay)
            if stop.is_set():
                break
            sample = samples[planned.sample_index]
            image, encoding = images[planned.sample_index]
            frame = Frame(
                frame_id=planned.frame_id,
                line_id=sim.line_id,
                station_id=sim.station_id,
                camera_id=planned.camera_id,
                captured_at=time.time_ns(),
                encoding=encoding,
                image=image,
                width=raw_size[0] if encoding == "raw8" else None,
                height=raw_size[1] if encoding == "raw8" else None,
                product=sample.product if options.hint else None,
                deadline_ms=options.deadline_ms,
            )
            if claims is not None and goes_by_reference(
                len(image), None, None, settings.claim_check.inline_max_bytes
            ):
                frame = await asyncio.to_thread(claims.claim_check, frame)
            if planned.bad_kind is None:
                value = encode(frame)
            else:
                value = bad_record_value(planned.bad_kind, frame, rng)
                stats.bad += 1
                stats.by_kind[planned.bad_kind] = stats.by_kind.get(planned.bad_kind, 0) + 1
            key = planned.camera_id.encode()
            with tracer.start_as_current_span("capture", kind=trace.SpanKind.PRODUCER) as span:
                set_messaging_attributes(span, "publish", topic, key=key)
                span.set_attribute("lineguard.frame_id", planned.frame_id)
                headers = inject_headers([(FRAME_ID_HEADER, planned.frame_id.encode())])
                delivery = await producer.send(topic, value=value, key=key, headers=headers)
            in_flight.add(delivery)
            delivery.add_done_callback(in_flight.discard)
            stats.sent += 1
            if truth_file is not None:
                write_truth_line(truth_file, TruthRecord.for_frame(planned, sample, frame.captured_at))
        await producer.flush()
        for delivery in list(in_flight):
            await delivery  # raises if a record could not be delivered
    finally:
        await producer.stop()
        if truth_file is not None:
            truth_file.close()
        stats.finished = asyncio.get_running_loop().time()
    log_event(log, "camera_sim_finished", **stats.summary())
    return stats
