"""``lineguard camera-sim``: publish camera frames to the ``frames`` topic at a steady rate.

The plan (which sample, which camera, which bad frame) comes from ``plan.py``; this module only
paces it on the event loop's clock, encodes, sends and records the ground truth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from shared.lifecycle import run_until_signalled

log = logging.getLogger("lineguard.camera_sim")


@dataclass
class SimOptions:
    data: Path | None = None  # MVTec-layout folder; None: synthetic
    products: Sequence[str] = ()  # synthetic products; empty: all
    defect_rate: float = 0.3
    pool: int = 48
    size: int = 224
    rate: float = 5.0  # frames per second per camera
    count: int | None = 100  # None: until stopped
    cameras: int = 1
    bad_rate: float = 0.0
    bad_kinds: Sequence[str] = ()
    truth: Path | None = None
    deadline_ms: int | None = None
    hint: bool = False
    seed: int = 0
    run_id: str | None = None


@dataclass
class SimStats:
    sent: int = 0
    bad: int = 0
    max_behind_s: float = 0.0  # how far the sender fell behind its clock
    started: float = 0.0
    finished: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)


def load_samples(options: SimOptions) -> list[Any]:
    from services.camera_sim.plan import scan_mvtec, synthetic_samples
    from shared.synthetic import DEFECT_TYPES, SYNTHETIC_CLASSES

    if options.data is not None:
        return scan_mvtec(options.data)
    products = list(options.products) or list(SYNTHETIC_CLASSES)
    unknown = set(products) - set(SYNTHETIC_CLASSES)
    if unknown:
        raise ValueError(f"unknown synthetic products {sorted(unknown)}; choose from {SYNTHETIC_CLASSES}")
    return synthetic_samples(products, DEFECT_TYPES, options.pool, options.defect_rate, options.seed)


async def run_camera_sim(settings: Any, options: SimOptions, stop: asyncio.Event | None = None) -> SimStats:
    """Send the planned frames; returns when all are delivered or ``stop`` is set."""
    import numpy as np

    from services.camera_sim.badframes import bad_record_value
    from services.camera_sim.images import sample_image
    from services.camera_sim.plan import BAD_KINDS, camera_ids, frame_plan, tick_time
    from services.camera_sim.truth import FRAME_ID_HEADER, TruthRecord, write_truth_line
    from shared.kafka.client import make_producer
    from shared.messages.codec import encode
    from shared.messages.schemas import Frame
    from shared.telemetry.logging import log_event
    from shared.telemetry.tracing import get_tracer, inject_headers

    if options.rate <= 0:
        raise ValueError("--rate must be positive")
    stop = stop or asyncio.Event()
    samples = load_samples(options)
    cameras = camera_ids(settings.camera_sim.camera_id, options.cameras)
    # Encode every sample before the clock starts, so pacing is not disturbed by rendering.
    images = await asyncio.to_thread(lambda: [sample_image(s, options.size) for s in samples])
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
                product=sample.product if options.hint else None,
                deadline_ms=options.deadline_ms,
            )
            with tracer.start_as_current_span("capture") as span:
                span.set_attribute("lineguard.frame_id", planned.frame_id)
                headers = inject_headers([(FRAME_ID_HEADER, planned.frame_id.encode())])
            if planned.bad_kind is None:
                value = encode(frame)
            else:
                value = bad_record_value(planned.bad_kind, frame, rng)
                stats.bad += 1
                stats.by_kind[planned.bad_kind] = stats.by_kind.get(planned.bad_kind, 0) + 1
            delivery = await producer.send(
                topic, value=value, key=planned.camera_id.encode(), headers=headers
            )
            in_flight.add(delivery)
            delivery.add_done_callback(in_flight.discard)
            stats.sent += 1
            if truth_file is not None:
                write_truth_line(
                    truth_file,
                    TruthRecord(
                        frame_id=planned.frame_id,
                        camera_id=planned.camera_id,
                        product=sample.product,
                        label=sample.label,
                        defect_type=sample.defect_type,
                        bad=planned.bad_kind,
                        source=str(sample.path) if sample.path else "synthetic",
                        captured_at=frame.captured_at,
                    ),
                )
        await producer.flush()
        for delivery in list(in_flight):
            await delivery  # raises if a record could not be delivered
    finally:
        await producer.stop()
        if truth_file is not None:
            truth_file.close()
        stats.finished = asyncio.get_running_loop().time()
    log_event(
        log,
        "camera_sim_finished",
        sent=stats.sent,
        bad=stats.bad,
        bad_by_kind=stats.by_kind,
        seconds=round(stats.finished - stats.started, 3),
        max_behind_s=round(stats.max_behind_s, 4),
    )
    return stats


def _options_from_args(args: argparse.Namespace) -> SimOptions:
    return SimOptions(
        data=args.data,
        products=[p for p in (args.products or "").split(",") if p],
        defect_rate=args.defect_rate,
        pool=args.pool,
        size=args.size,
        rate=args.rate,
        count=args.count or None,
        cameras=args.cameras,
        bad_rate=args.bad_rate,
        bad_kinds=[k for k in (args.bad_kinds or "").split(",") if k],
        truth=args.truth,
        deadline_ms=args.deadline_ms,
        hint=args.hint,
        seed=args.seed,
        run_id=args.run_id,
    )


def _command(args: argparse.Namespace) -> int:
    from shared.settings import load_settings
    from shared.telemetry.logging import setup_logging
    from shared.telemetry.tracing import setup_tracing

    settings = load_settings()
    setup_logging("camera-sim", settings.log_level)
    setup_tracing("camera-sim", settings.otel_exporter)
    options = _options_from_args(args)

    async def main(stop: asyncio.Event) -> int:
        stats = await run_camera_sim(settings, options, stop)
        print(f"camera-sim: sent {stats.sent} frames ({stats.bad} bad on purpose)", file=sys.stderr)
        return 0

    try:
        return run_until_signalled(main)
    except (ValueError, FileNotFoundError) as exc:
        print(f"camera-sim: {exc}", file=sys.stderr)
        return 2


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "camera-sim",
        help="publish camera frames (dataset or synthetic) to the frames topic",
        description="Publish frames at a steady rate per camera, optionally with bad frames injected, "
        "and write the ground truth for evaluation.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, help="MVTec-layout folder (one class, or a folder of classes)")
    source.add_argument("--synthetic", action="store_true", help="render synthetic products (default)")
    parser.add_argument("--products", help="synthetic products, comma separated (default: all)")
    parser.add_argument("--defect-rate", type=_probability, default=0.3, help="synthetic defect share")
    parser.add_argument("--pool", type=_positive_int, default=48, help="synthetic samples to cycle through")
    parser.add_argument("--size", type=_positive_int, default=224, help="synthetic image side in pixels")
    parser.add_argument("--rate", type=float, default=5.0, help="frames per second per camera")
    parser.add_argument("--count", type=int, default=100, help="frames in all (0: until stopped)")
    parser.add_argument("--cameras", type=_positive_int, default=1, help="number of cameras")
    parser.add_argument("--bad-rate", type=_probability, default=0.0, help="share of bad frames")
    parser.add_argument("--bad-kinds", help="bad frame kinds, comma separated (default: all)")
    parser.add_argument("--truth", type=Path, help="write the ground truth here (JSON lines)")
    parser.add_argument("--deadline-ms", type=int, help="verdict deadline after capture, in ms")
    parser.add_argument("--hint", action="store_true", help="send the product class as a hint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-id", help="prefix of frame ids (default: random)")
    parser.set_defaults(handler=_command)
