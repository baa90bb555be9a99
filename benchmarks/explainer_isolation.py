"""Does a slow VLM slow down the verdicts? Scorer throughput with and without the explainer.

Runs the real line on a real broker, twice, on the same pre-produced synthetic frames:

1. ``alone``: camera simulator -> frames -> ``lineguard scorer`` -> verdicts;
2. ``with_explainer``: the same, plus ``lineguard explainer`` consuming every defect event and
   calling a deliberately slow OpenAI-protocol server on localhost (``--vlm-delay`` seconds per
   call, the stand-in for a paid VLM).

Scorer and explainer are separate processes, as in production. Throughput is counted from the
verdicts' ``decided_at`` after a warm-up share, so model loading and start-up do not count.

    .venv/bin/python -m benchmarks.explainer_isolation --frames 300 --vlm-delay 2

Starts its own broker unless ``LINEGUARD_KAFKA_BOOTSTRAP`` is set; fits a small demo model on
synthetic images unless ``--model DIR`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from shared.kafka.client import ensure_topics
from shared.messages.schemas import Report, Verdict
from shared.settings import Settings
from tests.support.broker import kafka_bootstrap
from tests.support.models import PRODUCTS, fit_synthetic_model
from tests.support.openai_server import FakeOpenAIServer, ReceivedRequest, Reply
from tests.support.processes import ServiceProcess, service_env
from tests.support.reports import answer_json
from tests.support.topics import read_messages

LOG_LEVEL = "WARNING"  # the services' logs are not measured; keep them quiet


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
    env = service_env(settings, log_level=LOG_LEVEL)
    sim_args = ["camera-sim", "--synthetic", "--products", ",".join(PRODUCTS), "--defect-rate", "0.5"]
    sim_args += ["--count", str(frames), "--rate", "1000", "--seed", "1"]
    sim = ServiceProcess(sim_args, env, workdir / f"{name}-sim.log")
    if await sim.wait_exit(300) != 0:
        raise RuntimeError(f"camera simulator failed; see {sim.log_path}")
    explainer = None
    if vlm is not None:
        explaining = {
            "base_url": vlm.base_url,
            "api_key": "sk-bench",
            "report_dir": workdir / "reports",
            "follow_up_below": 0.0,
            "requests_per_minute": 6000.0,
        }
        with_vlm = settings.model_copy(update={"explainer": settings.explainer.model_copy(update=explaining)})
        explainer_env = service_env(with_vlm, "explainer", log_level=LOG_LEVEL)
        explainer = ServiceProcess(["explainer"], explainer_env, workdir / f"{name}-explainer.log")
    scorer = ServiceProcess(["scorer", "--model", str(model)], env, workdir / f"{name}-scorer.log")
    started = time.monotonic()
    try:
        verdicts = await read_messages(settings, "verdicts", Verdict, frames, timeout_s=600)
        elapsed = time.monotonic() - started
        reports: list[Report] = []
        if vlm is not None:  # what the explainer managed while the verdicts flowed
            reports = await read_messages(settings, "reports", Report, frames, timeout_s=3)
    finally:
        await scorer.terminate(60)
        if explainer is not None:
            await explainer.terminate(60)
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
        with kafka_bootstrap(workdir / "kafka") as bootstrap:
            model = args.model
            if model is None:  # a small demo model on synthetic images
                model = workdir / "model"
                fit_synthetic_model(model, per_class=args.train_per_class, bank=2000)

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
