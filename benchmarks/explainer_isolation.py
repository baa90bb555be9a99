"""Does a slow VLM slow down the verdicts? Scorer throughput with and without the explainer.

Runs the real line on a real broker, twice, on the same pre-produced synthetic frames:

1. ``alone``: camera simulator -> frames -> ``lineguard scorer`` -> verdicts;
2. ``with_explainer``: the same, plus ``lineguard explainer`` consuming every defect event and
   calling a deliberately slow OpenAI-protocol server on localhost (``--vlm-delay`` seconds per
   call, the stand-in for a paid VLM).

Scorer and explainer are separate processes, as in production. Throughput is counted from the
verdicts' ``decided_at`` after a warm-up share, so model loading and start-up do not count.

    .venv/bin/python benchmarks/explainer_isolation.py --frames 300 --vlm-delay 2

Starts its own broker unless ``LINEGUARD_KAFKA_BOOTSTRAP`` is set; fits a small demo model on
synthetic images unless ``--model DIR`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared.kafka.client import ensure_topics, make_consumer  # noqa: E402
from shared.messages.codec import decode  # noqa: E402
from shared.messages.schemas import Report, Verdict  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.support.defect_events import answer_json  # noqa: E402
from tests.support.openai_server import FakeOpenAIServer, ReceivedRequest, Reply  # noqa: E402

PRODUCTS = ("washer", "fabric")


def fit_demo_model(out: Path, per_class: int) -> Path:
    import numpy as np

    from shared.engine.config import FitConfig
    from shared.engine.fitting import fit_model
    from shared.engine.persistence import save_model
    from shared.synthetic import render_sample

    rng = np.random.default_rng(0)
    data: dict[str, Sequence[Path | np.ndarray]] = {
        p: [render_sample(p, rng)[0] for _ in range(per_class)] for p in PRODUCTS
    }
    model = fit_model(data, FitConfig(bank_size=2000))
    save_model(model, out)
    return out


def lineguard(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "lineguard"), *args], env=env, stdout=handle, stderr=handle, cwd=REPO
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def collect(settings: Settings, topic: str, message: type, count: int, timeout_s: float) -> list[Any]:
    consumer = make_consumer(settings, settings.topic(topic), group_id=None)
    await consumer.start()
    try:
        found: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(found) < count and time.monotonic() < deadline:
            for part in (await consumer.getmany(timeout_ms=500)).values():
                found += [decode(r.value, message) for r in part]
        return found
    finally:
        await consumer.stop()


def throughput(verdicts: list[Verdict], warmup: float) -> float:
    """Frames per second over the verdicts after the warm-up share. (The frames are produced
    before the scorer starts, so their latency is queueing time and not reported.)"""
    ordered = sorted(verdicts, key=lambda v: v.decided_at)
    steady = ordered[int(len(ordered) * warmup) :]
    span_s = (steady[-1].decided_at - steady[0].decided_at) / 1e9
    return (len(steady) - 1) / span_s if span_s > 0 else float("nan")


async def run_phase(
    name: str, bootstrap: str, model: Path, frames: int, workdir: Path, vlm: FakeOpenAIServer | None
) -> dict[str, Any]:
    prefix = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    requests_before = len(vlm.chat_requests()) if vlm is not None else 0
    settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix)
    await ensure_topics(settings, frames_partitions=1)
    env = {
        **os.environ,
        "LINEGUARD_KAFKA_BOOTSTRAP": bootstrap,
        "LINEGUARD_TOPIC_PREFIX": prefix,
        "LINEGUARD_LOG_LEVEL": "WARNING",
    }
    sim = lineguard(
        "camera-sim",
        "--synthetic",
        "--products",
        ",".join(PRODUCTS),
        "--defect-rate",
        "0.5",
        "--count",
        str(frames),
        "--rate",
        "1000",
        "--seed",
        "1",
        env=env,
        log=workdir / f"{name}-sim.log",
    )
    if sim.wait(300) != 0:
        raise RuntimeError(f"camera simulator failed; see {workdir / f'{name}-sim.log'}")
    explainer = None
    if vlm is not None:
        explainer_env = {
            **env,
            "LINEGUARD_EXPLAINER__BASE_URL": vlm.base_url,
            "LINEGUARD_EXPLAINER__API_KEY": "sk-bench",
            "LINEGUARD_EXPLAINER__REPORT_DIR": str(workdir / "reports"),
            "LINEGUARD_EXPLAINER__FOLLOW_UP_BELOW": "0",
            "LINEGUARD_EXPLAINER__REQUESTS_PER_MINUTE": "6000",
        }
        explainer = lineguard("explainer", env=explainer_env, log=workdir / f"{name}-explainer.log")
    scorer = lineguard("scorer", "--model", str(model), env=env, log=workdir / f"{name}-scorer.log")
    started = time.monotonic()
    try:
        verdicts = await collect(settings, "verdicts", Verdict, frames, timeout_s=600)
        elapsed = time.monotonic() - started
        reports: list[Report] = []
        if vlm is not None:  # what the explainer managed while the verdicts flowed
            reports = await collect(settings, "reports", Report, frames, timeout_s=3)
    finally:
        stop(scorer)
        if explainer is not None:
            stop(explainer)
    if len(verdicts) < frames:
        raise RuntimeError(f"{name}: only {len(verdicts)} of {frames} verdicts")
    fps = throughput(verdicts, warmup=0.1)
    defects = sum(1 for v in verdicts if v.decision in ("reject", "review"))
    return {
        "phase": name,
        "frames": frames,
        "verdict_fps": round(fps, 2),
        "defect_events": defects,
        "wall_s": round(elapsed, 1),
        "reports_during_run": len(reports),
        "vlm_requests": (len(vlm.chat_requests()) - requests_before) if vlm is not None else 0,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--vlm-delay", type=float, default=2.0, help="seconds the VLM server takes per call")
    parser.add_argument("--model", type=Path, help="model directory (default: fit a small demo model)")
    parser.add_argument("--train-per-class", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="alone/with-explainer pairs, alternating")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lineguard-bench-") as tmp:
        workdir = Path(tmp)
        broker = None
        bootstrap = os.environ.get("LINEGUARD_KAFKA_BOOTSTRAP")
        if not bootstrap:
            from shared.kafka.broker import LocalBroker

            broker = LocalBroker.on_free_ports(workdir / "kafka", REPO / ".cache/kafka/libs")
            broker.start()
            bootstrap = broker.bootstrap
        try:
            model = args.model or fit_demo_model(workdir / "model", args.train_per_class)

            def slow(_: ReceivedRequest) -> Reply:
                return Reply(content=answer_json(), delay_s=args.vlm_delay)

            results = []
            with FakeOpenAIServer(responder=slow) as vlm:
                for round_no in range(args.rounds):  # alternate, so drift on a shared machine hits both
                    results.append(
                        await run_phase(f"alone-{round_no}", bootstrap, model, args.frames, workdir, None)
                    )
                    results.append(
                        await run_phase(
                            f"with_explainer-{round_no}", bootstrap, model, args.frames, workdir, vlm
                        )
                    )
        finally:
            if broker is not None:
                broker.stop()
    alone = [r["verdict_fps"] for r in results if r["phase"].startswith("alone")]
    loaded = [r["verdict_fps"] for r in results if r["phase"].startswith("with_explainer")]
    summary = {
        "results": results,
        "vlm_delay_s": args.vlm_delay,
        "alone_fps_mean": round(sum(alone) / len(alone), 2),
        "with_explainer_fps_mean": round(sum(loaded) / len(loaded), 2),
        "throughput_ratio": round(sum(loaded) / sum(alone), 3),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
