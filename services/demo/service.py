"""``lineguard demo``: the whole line on this machine for a couple of minutes, then a summary.

Starts the local Kafka broker (unless LINEGUARD_KAFKA_BOOTSTRAP names one), creates this run's
topics, generates a synthetic MVTec-layout dataset, fits a model with the real efficientnet_lite0
weights, runs ``lineguard scorer``, ``explainer`` (fallback reports: no VLM), ``plc-bridge`` (into a
simulated Modbus PLC served by this process) and ``camera-sim`` as subprocesses, reads the committed
verdicts and dead letters, prints how the line did against the ground truth, whether the PLC counted
what the verdicts say, and where the defect reports and heatmap overlays are; and stops everything
it started, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from services.demo.core import (
    Children,
    child_env,
    fit_model,
    plc_agreement,
    prepare_dataset,
    report_files,
    say,
    wait_for_log,
    where_to_look,
)
from services.demo.plc import PlcOnThread
from shared.engine.config import Decision
from shared.errors import ConfigError
from shared.settings import Settings


async def collect(settings: Settings, good: int, bad: int, timeout_s: float) -> tuple[list[Any], list[Any]]:
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


def wait_for_reports(report_dir: Path, expected: int, timeout_s: float) -> None:
    """Until the explainer has written a report for each defect event, or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(report_files(report_dir)) < expected:
        time.sleep(0.5)


def run_demo(args: argparse.Namespace) -> int:
    from services.camera_sim.truth import evaluate, format_report, read_truth
    from shared.kafka.broker import LocalBroker, free_port
    from shared.kafka.client import delete_topics, ensure_topics
    from shared.settings import load_settings

    started = time.monotonic()
    base = load_settings()
    run_id = uuid.uuid4().hex[:6]
    settings = base.model_copy(update={"topic_prefix": f"{base.topic_prefix}-demo-{run_id}"})
    work = Path(args.workdir)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    products = [p for p in args.products.split(",") if p]
    if len(products) < 2:
        raise ConfigError("--products: the demo needs at least two products")
    children = Children()
    plc: PlcOnThread | None = None
    broker: LocalBroker | None = None
    topics: list[str] = []
    try:
        if base.kafka_bootstrap is None:
            broker = LocalBroker(base.broker)
            if broker.status().running:
                say(f"using the Kafka broker already running at {broker.bootstrap}")
                broker = None  # not ours to stop
            else:
                say(f"starting Kafka (KRaft, single node) at {broker.bootstrap} ...")
                broker.start()
        else:
            say(f"using the Kafka broker at {base.kafka_bootstrap}")
        topics = asyncio.run(ensure_topics(settings, frames_partitions=2))
        say(f"topics ready: {', '.join(topics)}")

        data_root = work / "data"
        prepare_dataset(data_root, products, args.train, args.size)
        model_dir = work / "models" / f"model-{run_id}"
        t0 = time.monotonic()
        version = fit_model(data_root, products, model_dir, args.size, args.bank)
        say(
            f"fitted model {version} (efficientnet_lite0, real weights, {args.size} px) in "
            f"{time.monotonic() - t0:.1f} s -> {model_dir}"
        )

        env = child_env(settings)
        cli = [sys.executable, "-m", "services.cli"]
        scorer_log = work / "logs" / "scorer.log"
        scorer = children.start("scorer", [*cli, "scorer", "--model", str(model_dir)], env, scorer_log)
        wait_for_log(scorer_log, "partitions_assigned", scorer, 90)
        say(f"scorer running (pid {scorer.pid}); log: {scorer_log}")

        report_dir = work / "reports" / run_id
        explainer_log = work / "logs" / "explainer.log"
        explainer_env = {**env, "LINEGUARD_EXPLAINER__REPORT_DIR": str(report_dir)}
        explainer = children.start("explainer", [*cli, "explainer"], explainer_env, explainer_log)
        wait_for_log(explainer_log, "explainer_started", explainer, 60)
        say(f"explainer running without a VLM (fallback reports) -> {report_dir}")

        plc = PlcOnThread(free_port())
        plc.start()
        bridge_log = work / "logs" / "plc-bridge.log"
        bridge_env = {
            **env,
            "LINEGUARD_PLC_BRIDGE__MODBUS_HOST": "127.0.0.1",
            "LINEGUARD_PLC_BRIDGE__MODBUS_PORT": str(plc.port),
            # this run's applied-verdicts ledger: a fresh PLC, a fresh ledger, beside the run's logs
            "LINEGUARD_PLC_BRIDGE__LEDGER_PATH": str(work / "plc-bridge" / f"{run_id}-ledger.jsonl"),
        }
        bridge = children.start("plc-bridge", [*cli, "plc-bridge"], bridge_env, bridge_log)
        wait_for_log(bridge_log, "plc bridge ready", bridge, 60)
        say(f"PLC bridge driving a simulated Modbus PLC at 127.0.0.1:{plc.port}")

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
        say(
            f"camera simulator sending {args.frames} frames from {args.cameras} cameras "
            f"at {args.rate} fps each ..."
        )
        budget = max(10.0, args.max_seconds - (time.monotonic() - started))
        try:
            camera.wait(budget)
        except subprocess.TimeoutExpired:
            say("time is up: stopping the camera simulator early")
        children.stop(camera)
        truth = read_truth(truth_path)
        bad = sum(1 for r in truth.values() if r.bad is not None)
        verdicts, letters = asyncio.run(collect(settings, len(truth) - bad, bad, timeout_s=30))
        time.sleep(1.0)  # the bridge's last writes (it polls every 50 ms), before the scorer stops
        plc_line, plc_agrees = plc_agreement(plc.station(0), verdicts)
        scorer_exit = children.stop(scorer)
        defects = sum(1 for v in verdicts if Decision(v.decision).is_defect)
        wait_for_reports(report_dir, defects, timeout_s=30)
        evaluation = evaluate(truth, verdicts, letters)
        print()
        print(f"Lineguard demo {run_id}: {', '.join(products)}, model {version}")
        print(format_report(evaluation))
        print(f"scorer exit code   {scorer_exit} (SIGTERM: finish the batch, commit, exit)")
        print(plc_line)
        for line in where_to_look(report_files(report_dir)):
            print(line)
        print(f"demo wall time     {time.monotonic() - started:.0f} s; logs in {work / 'logs'}")
        complete = not evaluation.missing and not evaluation.duplicates and evaluation.unexpected == 0
        return 0 if complete and scorer_exit == 0 and plc_agrees else 1
    finally:
        children.stop_all()
        if plc is not None:
            plc.stop()
        if topics:
            with contextlib.suppress(Exception):
                asyncio.run(delete_topics(settings, topics))
        if broker is not None:
            say("stopping the Kafka broker this demo started")
            broker.stop()
