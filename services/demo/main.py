"""``lineguard demo``: the whole line on this machine for a couple of minutes, then a summary.

Starts the local Kafka broker (unless LINEGUARD_KAFKA_BOOTSTRAP names one), creates this run's
topics, generates a synthetic MVTec-layout dataset, fits a model with the real efficientnet_lite0
weights, runs ``lineguard scorer`` and ``lineguard camera-sim`` as subprocesses, reads the committed
verdicts and dead letters, prints how the line did against the ground truth, and stops everything it
started, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


class Children:
    """Subprocesses this demo started; all of them are stopped on the way out."""

    def __init__(self) -> None:
        self._running: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        process = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        self._running.append((name, process, log))
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> int:
        """SIGTERM (a clean shutdown), then SIGKILL if it does not exit in time."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        for entry in [e for e in self._running if e[1] is process]:
            entry[2].close()
            self._running.remove(entry)
        return process.returncode

    def stop_all(self) -> None:
        for _, process, _ in reversed(list(self._running)):
            self.stop(process)


def _wait_for_log(path: Path, needle: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.2)
    tail = path.read_text(errors="replace")[-2000:] if path.exists() else ""
    raise RuntimeError(f"{path.name}: no {needle!r} within {timeout_s:.0f}s (exit {process.poll()}):\n{tail}")


def _fit_model(data_root: Path, products: list[str], model_dir: Path, input_size: int, bank_size: int) -> str:
    import torch

    from shared.engine.config import FitConfig
    from shared.engine.fitting import fit_model
    from shared.engine.persistence import save_model

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    train: dict[str, Sequence[Path | np.ndarray]] = {
        p: sorted((data_root / p / "train" / "good").glob("*.png")) for p in products
    }
    model = fit_model(train, FitConfig(input_size=input_size, bank_size=bank_size))
    save_model(model, model_dir)
    return model.version


async def _collect(settings: Any, good: int, bad: int, timeout_s: float) -> tuple[list[Any], list[Any]]:
    """Committed verdicts and dead letters of this run's topics, until all frames are accounted for."""
    from shared.kafka.client import make_consumer
    from shared.messages.codec import decode
    from shared.messages.schemas import DeadLetter, Verdict

    consumer = make_consumer(settings, settings.topic("verdicts"), settings.topic("dlq"), group_id=None)
    await consumer.start()
    verdicts: list[Any] = []
    letters: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and (len(verdicts) < good or len(letters) < bad):
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    if tp.topic == settings.topic("verdicts"):
                        verdicts.append(decode(record.value, Verdict))
                    else:
                        letters.append(decode(record.value, DeadLetter))
    finally:
        await consumer.stop()
    return verdicts, letters


def run_demo(args: argparse.Namespace) -> int:
    from services.camera_sim.truth import evaluate, format_report, read_truth
    from shared.kafka.broker import LocalBroker
    from shared.kafka.client import delete_topics, ensure_topics
    from shared.settings import load_settings
    from shared.synthetic import write_mvtec_dataset

    started = time.monotonic()
    base = load_settings()
    run_id = uuid.uuid4().hex[:6]
    settings = base.model_copy(update={"topic_prefix": f"{base.topic_prefix}-demo-{run_id}"})
    work = Path(args.workdir)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    products = [p for p in args.products.split(",") if p]
    if len(products) < 2:
        raise ValueError("the demo needs at least two products")
    children = Children()
    broker: LocalBroker | None = None
    topics: list[str] = []
    try:
        if base.kafka_bootstrap is None:
            broker = LocalBroker(base.broker)
            if broker.status().running:
                _say(f"using the Kafka broker already running at {broker.bootstrap}")
                broker = None  # not ours to stop
            else:
                _say(f"starting Kafka (KRaft, single node) at {broker.bootstrap} ...")
                broker.start()
        else:
            _say(f"using the Kafka broker at {base.kafka_bootstrap}")
        topics = asyncio.run(ensure_topics(settings, frames_partitions=2))
        _say(f"topics ready: {', '.join(topics)}")

        data_root = work / "data"
        # The dataset is deterministic in these parameters; regenerate only when they change.
        recipe = json.dumps({"products": sorted(products), "train": args.train, "size": args.size})
        marker = data_root / ".complete"
        if not marker.exists() or marker.read_text() != recipe:
            _say(f"generating a synthetic MVTec-layout dataset of {', '.join(products)} in {data_root} ...")
            shutil.rmtree(data_root, ignore_errors=True)
            write_mvtec_dataset(
                data_root, products, n_train=args.train, n_test_good=20, n_test_defect=10, size=args.size
            )
            marker.write_text(recipe)
        model_dir = work / "models" / f"model-{run_id}"
        t0 = time.monotonic()
        version = _fit_model(data_root, products, model_dir, args.size, args.bank)
        _say(
            f"fitted model {version} (efficientnet_lite0, real weights, {args.size} px) in "
            f"{time.monotonic() - t0:.1f} s -> {model_dir}"
        )

        env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
        env.update(
            {
                "LINEGUARD_KAFKA_BOOTSTRAP": settings.bootstrap,
                "LINEGUARD_TOPIC_PREFIX": settings.topic_prefix,
                "LINEGUARD_SCORER__GROUP_ID": f"{settings.topic_prefix}-scorer",
                "LINEGUARD_SCORER__TRANSACTIONAL_ID_PREFIX": f"{settings.topic_prefix}-scorer",
                "LINEGUARD_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        cli = [sys.executable, "-m", "services.cli"]
        scorer_log = work / "logs" / "scorer.log"
        scorer = children.start("scorer", [*cli, "scorer", "--model", str(model_dir)], env, scorer_log)
        _wait_for_log(scorer_log, "partitions_assigned", scorer, 90)
        _say(f"scorer running (pid {scorer.pid}); log: {scorer_log}")

        truth_path = work / "truth.jsonl"
        camera_log = work / "logs" / "camera-sim.log"
        camera = children.start(
            "camera-sim",
            [
                *cli,
                "camera-sim",
                "--data",
                str(data_root),
                "--rate",
                str(args.rate),
                "--count",
                str(args.frames),
                "--cameras",
                str(args.cameras),
                "--bad-rate",
                str(args.bad_rate),
                "--truth",
                str(truth_path),
                "--run-id",
                run_id,
            ],
            env,
            camera_log,
        )
        _say(
            f"camera simulator sending {args.frames} frames from {args.cameras} cameras "
            f"at {args.rate} fps each ..."
        )
        budget = max(10.0, args.max_seconds - (time.monotonic() - started))
        try:
            camera.wait(budget)
        except subprocess.TimeoutExpired:
            _say("time is up: stopping the camera simulator early")
        children.stop(camera)
        truth = read_truth(truth_path)
        bad = sum(1 for r in truth.values() if r.bad is not None)
        verdicts, letters = asyncio.run(_collect(settings, len(truth) - bad, bad, timeout_s=30))
        scorer_exit = children.stop(scorer)
        evaluation = evaluate(truth, verdicts, letters)
        print()
        print(f"Lineguard demo {run_id}: {', '.join(products)}, model {version}")
        print(format_report(evaluation))
        print(f"scorer exit code   {scorer_exit} (SIGTERM: finish the batch, commit, exit)")
        print(f"demo wall time     {time.monotonic() - started:.0f} s; logs in {work / 'logs'}")
        complete = not evaluation.missing and not evaluation.duplicates and evaluation.unexpected == 0
        return 0 if complete and scorer_exit == 0 else 1
    finally:
        children.stop_all()
        if topics:
            with contextlib.suppress(Exception):
                asyncio.run(delete_topics(settings, topics))
        if broker is not None:
            _say("stopping the Kafka broker this demo started")
            broker.stop()


def _command(args: argparse.Namespace) -> int:
    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through run_demo's cleanup

    signal.signal(signal.SIGTERM, interrupted)
    try:
        return run_demo(args)
    except KeyboardInterrupt:
        _say("interrupted; everything the demo started has been stopped")
        return 130
    except (RuntimeError, ValueError, OSError) as exc:
        _say(f"failed: {exc}")
        return 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole line locally (Kafka, model, camera simulator, scorer) and print a summary",
    )
    parser.add_argument("--workdir", default="var/demo", help="dataset, model, ground truth and logs")
    parser.add_argument("--products", default="washer,fabric", help="synthetic products (two or more)")
    parser.add_argument("--size", type=int, default=160, help="image and model input size in pixels")
    parser.add_argument("--train", type=int, default=40, help="training images per product")
    parser.add_argument("--bank", type=int, default=1000, help="memory bank size per product")
    parser.add_argument("--frames", type=int, default=200, help="frames to send in all")
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--rate", type=float, default=6.0, help="frames per second per camera")
    parser.add_argument("--bad-rate", type=float, default=0.05, help="share of bad frames injected")
    parser.add_argument("--max-seconds", type=float, default=110.0, help="overall time budget")
    parser.set_defaults(handler=_command)
