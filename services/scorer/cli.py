"""The scorer's commands: ``lineguard scorer`` (the service) and ``lineguard announce`` (hot swap).

Heavy imports (torch, aiokafka, the service) happen inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from shared.errors import ModelRefused


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "scorer",
        help="score frames from Kafka and publish verdicts (exactly once)",
        description="Consume the frames topic in a consumer group, score each frame with the inspection "
        "model and publish verdicts, defect events and dead letters transactionally.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="model directory (default: LINEGUARD_SCORER__MODEL_DIR, "
        "else the latest announcement on the models topic)",
    )
    parser.set_defaults(handler=_scorer_command)

    announce = subparsers.add_parser(
        "announce",
        help="announce a model directory on the models topic (running scorers swap it in)",
        description="Verify a model directory (every hash, a full load) and publish its announcement on "
        "the compacted models topic. Every scorer loads it in the background and swaps it in between "
        "batches; a scorer that cannot load or verify it keeps its current model. The path must be "
        "readable at the same location by every scorer.",
    )
    announce.add_argument("--model", type=Path, required=True, help="model directory written by `fit`")
    announce.set_defaults(handler=_announce_command)


def _scorer_command(args: argparse.Namespace) -> int:
    from services.scorer import metrics
    from services.scorer.service import serve
    from services.scorer.watchdog import Health
    from shared.lifecycle import run_until_signalled
    from shared.settings import load_settings
    from shared.telemetry.logging import setup_logging
    from shared.telemetry.metrics import start_metrics_server
    from shared.telemetry.tracing import setup_tracing

    settings = load_settings()
    setup_logging("scorer", settings.log_level)
    setup_tracing("scorer", settings.otel_exporter)
    health = Health()
    # /healthz on the metrics port: 200 while the scorer makes progress (docs/operations.md).
    start_metrics_server(settings.metrics_port, metrics.REGISTRY, health=health.report)
    model_dir = args.model or settings.scorer.model_dir
    if model_dir is None and not settings.scorer.watch_models:
        print("scorer: no model: pass --model DIR or enable LINEGUARD_SCORER__WATCH_MODELS", file=sys.stderr)
        return 2
    import torch

    from shared.engine.scorers.index import set_search_threads

    torch.set_num_threads(settings.scorer.torch_threads)  # per model worker (set_num_threads is global)
    set_search_threads(settings.scorer.search_threads)

    try:
        code = run_until_signalled(lambda stop: serve(settings, model_dir, stop, health))
    except ModelRefused as exc:
        print(f"scorer: model {model_dir} refused: {exc}", file=sys.stderr)
        return 2
    if code != 0:
        # A failed scorer has left its group; a model or decode thread may still be hung, and the
        # interpreter would wait for it forever on the way out. Exit now.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)
    return code


def _announce_command(args: argparse.Namespace) -> int:
    from services.scorer.models import announcement_for, load_model_dir, publish_announcement
    from shared.settings import load_settings

    settings = load_settings()
    path = args.model.resolve()
    try:
        serving = load_model_dir(path)  # refuse to announce what a scorer would refuse to load
        announcement = announcement_for(path)
    except ModelRefused as exc:
        print(f"announce: model {path} refused: {exc}", file=sys.stderr)
        return 2
    asyncio.run(publish_announcement(settings, announcement))
    print(f"announced model {serving.version} ({path}) on {settings.topic('models')}")
    return 0
