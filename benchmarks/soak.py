"""The soak: the line under steady load for a long time; does memory or latency drift?

    nice -n 10 .venv/bin/python -m benchmarks.soak --duration 3600 --rate 10

Runs on one broker (``LINEGUARD_KAFKA_BOOTSTRAP`` if set, else its own): ``lineguard scorer``,
``lineguard explainer`` (no VLM: fallback reports), ``lineguard plc-sim`` and ``lineguard plc-bridge``
(Modbus to the simulator) as separate processes, and the camera simulator in this process sending
``--rate`` frames/s (two cameras; set it to about half the line's throughput in
``benchmarks.pipeline`` for "half load") for ``--duration`` seconds. Every ``--sample-s`` seconds it
samples each process's resident memory (``VmRSS``) and the capture-to-verdict latency of the
verdicts read in that window (``read_committed``). After ``--warmup-s`` the first sample is the
baseline: the summary gives each process's RSS growth from there to the end (the mean of the last
three samples) and the p99 latency of the first and last windows. Prints one line per sample and a
summary (``--json FILE`` writes it); exit 1 if a process died or ``--max-rss-growth`` is exceeded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from services.camera_sim.service import run_camera_sim
from shared.kafka.broker import free_port
from shared.kafka.client import ensure_topics
from shared.messages.schemas import Verdict
from shared.settings import Settings
from tests.support.broker import kafka_bootstrap
from tests.support.line import scorer_process, sim_options
from tests.support.models import fit_synthetic_model
from tests.support.processes import ServiceProcess, service_env
from tests.support.topics import TopicReader

SIZE = 96
STATION = "station-1"


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_line(settings: Settings, model_dir: Path, work: Path) -> dict[str, ServiceProcess]:
    modbus = free_port()
    plc = {
        "stations": [STATION],
        "modbus_host": "127.0.0.1",
        "modbus_port": modbus,
        "group_id": f"{settings.topic_prefix}-plc",
        "ledger_path": str(work / "plc-ledger.jsonl"),
    }
    explainer = {"group_id": f"{settings.topic_prefix}-explainer", "report_dir": str(work / "reports")}
    return {
        "scorer": scorer_process(settings, model_dir, work / "scorer.log"),
        "explainer": ServiceProcess(
            ["explainer"], service_env(settings, explainer=explainer), work / "explainer.log"
        ),
        "plc-sim": ServiceProcess(
            [
                "plc-sim",
                "--modbus-port",
                str(modbus),
                "--opcua-port",
                str(free_port()),
                "--stations",
                STATION,
            ],
            service_env(settings),
            work / "plc-sim.log",
        ),
        "plc-bridge": ServiceProcess(
            ["plc-bridge"], service_env(settings, plc_bridge=plc), work / "plc-bridge.log"
        ),
    }


async def soak(args: argparse.Namespace, bootstrap: str, work: Path) -> dict[str, Any]:
    prefix = f"soak-{uuid.uuid4().hex[:6]}"
    base = Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix)
    scorer = {
        "group_id": f"{prefix}-scorer",
        "transactional_id_prefix": f"{prefix}-txn",
        "model_workers": 1,
        "torch_threads": 1,
        "search_threads": 1,
        "decode_threads": 1,
        "watch_models": False,
    }
    settings = base.model_copy(update={"scorer": base.scorer.model_copy(update=scorer)})
    await ensure_topics(settings, frames_partitions=2)
    model_dir = work / "model"
    print("fitting the model", flush=True)
    await asyncio.to_thread(
        fit_synthetic_model, model_dir, per_class=10, bank=300, size=SIZE, camera_frames=True
    )
    processes = start_line(settings, model_dir, work)
    samples: list[dict[str, Any]] = []
    died: list[str] = []
    try:
        await processes["scorer"].wait_for_log('"partitions_assigned"', 300)
        await processes["explainer"].wait_for_event("explainer_started", 300)
        await processes["plc-bridge"].wait_for_log("plc bridge ready", 300)
        options = sim_options(
            count=None, cameras=2, rate=args.rate / 2, defect_rate=0.3, bad_rate=0.0, run_id="soak"
        )
        stop = asyncio.Event()
        async with TopicReader(settings, "verdicts", Verdict) as verdicts:
            sender = asyncio.create_task(run_camera_sim(settings, options, stop))
            started = time.monotonic()
            seen = 0
            while time.monotonic() - started < args.duration:
                await asyncio.sleep(args.sample_s)
                values = verdicts.received.values[seen:]
                arrived = verdicts.received.arrived_ns[seen:]
                seen += len(values)
                latency = [(t - v.captured_at) / 1e6 for v, t in zip(values, arrived, strict=True)]
                sample = {
                    "t_s": round(time.monotonic() - started),
                    "verdicts": len(values),
                    "p50_ms": round(float(np.percentile(latency, 50)), 1) if latency else None,
                    "p99_ms": round(float(np.percentile(latency, 99)), 1) if latency else None,
                    "rss_mb": {name: rss_mb(p.process.pid) for name, p in processes.items()},
                }
                samples.append(sample)
                print(json.dumps(sample), flush=True)
                died = [
                    f"{n} exited {p.process.returncode}"
                    for n, p in processes.items()
                    if p.process.poll() is not None
                ]
                if died:
                    break
            stop.set()
            stats = await sender
    finally:
        for name, process in processes.items():
            if process.process.poll() is None:
                try:
                    await process.terminate(60)
                except AssertionError:
                    died.append(f"{name} did not stop on SIGTERM")
            else:
                process.kill()
    return summarize(args, samples, died, stats.sent)


def summarize(
    args: argparse.Namespace, samples: list[dict[str, Any]], died: list[str], sent: int
) -> dict[str, Any]:
    after = [s for s in samples if s["t_s"] >= args.warmup_s] or samples[-1:]
    growth: dict[str, Any] = {}
    if after:
        tail = after[-3:]
        for name in after[0]["rss_mb"]:
            first = after[0]["rss_mb"][name]
            last = [s["rss_mb"][name] for s in tail if s["rss_mb"][name] is not None]
            if first and last:
                end = sum(last) / len(last)
                growth[name] = {
                    "baseline_mb": round(first, 1),
                    "end_mb": round(end, 1),
                    "growth_pct": round(100 * (end - first) / first, 2),
                }
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_average": os.getloadavg(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "frames_sent": sent,
        "verdicts": sum(s["verdicts"] for s in samples),
        "rss_growth_after_warmup": growth,
        "p99_ms_first_window_after_warmup": after[0]["p99_ms"] if after else None,
        "p99_ms_last_window": samples[-1]["p99_ms"] if samples else None,
        "died": died,
        "samples": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds of load (default 3600)")
    parser.add_argument("--rate", type=float, default=10.0, help="frames/s in all (default 10)")
    parser.add_argument("--sample-s", type=float, default=30.0, help="seconds between samples (default 30)")
    parser.add_argument("--warmup-s", type=float, default=300.0, help="RSS baseline after this (default 300)")
    parser.add_argument(
        "--max-rss-growth", type=float, default=5.0, help="percent, after warm-up (default 5)"
    )
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # this process's readers' retries
    with (
        tempfile.TemporaryDirectory(prefix="lineguard-soak-") as tmp,
        kafka_bootstrap(Path(tmp) / "kafka") as bootstrap,
    ):
        summary = asyncio.run(soak(args, bootstrap, Path(tmp)))
    text = json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    over = {
        n: g["growth_pct"]
        for n, g in summary["rss_growth_after_warmup"].items()
        if g["growth_pct"] > args.max_rss_growth
    }
    for problem in summary["died"] + [f"{n}: RSS grew {pct}% after warm-up" for n, pct in over.items()]:
        print(f"FAILED: {problem}")
    return 1 if summary["died"] or over else 0


if __name__ == "__main__":
    raise SystemExit(main())
