"""The scorer's commands: ``lineguard scorer`` (the service), ``lineguard announce`` (hot swap) and
``lineguard model keygen`` (the key that signs announcements).

Heavy imports (torch, aiokafka, the service) happen inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import ModelRefused

if TYPE_CHECKING:
    from shared.messages.schemas import ModelAnnouncement


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
        description="Verify a model directory (every hash, a full load, a warm-up) and publish its signed "
        "announcement on the compacted models topic, and in the same transaction on the model-history "
        "topic (with who and why; `lineguard rollback` and the console read it). To announce only what a "
        "shadow run has shown to be better, use `lineguard promote`. The directory must lie inside the "
        "models root "
        "(LINEGUARD_SCORER__MODELS_ROOT) and is announced by its path relative to it. Every scorer checks "
        "the signature against its trusted keys, loads the model in the background and swaps it in "
        "between batches; a scorer that cannot verify or load it keeps its current model.",
    )
    announce.add_argument("--model", type=Path, required=True, help="model directory written by `fit`")
    signing = announce.add_mutually_exclusive_group(required=True)
    signing.add_argument(
        "--signing-key", type=Path, help="Ed25519 private key file from `lineguard model keygen` (mode 0600)"
    )
    signing.add_argument(
        "--unsigned",
        action="store_true",
        help="announce without a signature (taken only by scorers that trust no signing key)",
    )
    announce.add_argument("--reason", help="why, for the announcement history (shown in the console)")
    announce.set_defaults(handler=_announce_command)

    model = subparsers.add_parser("model", help="model signing keys (`lineguard model keygen`)")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    keygen = model_commands.add_parser(
        "keygen",
        help="make an Ed25519 key pair for signing model announcements",
        description="Write NAME.key (the private key, PKCS#8 PEM, readable by its owner only: keep it "
        "where models are approved) and NAME.pub (give it to every scorer: "
        "LINEGUARD_SCORER__TRUSTED_KEYS). Existing files are never overwritten.",
    )
    keygen.add_argument("--out", type=Path, required=True, help="folder for the two key files")
    keygen.add_argument("--name", default="model-signing", help="file name stem (default: model-signing)")
    keygen.set_defaults(handler=_keygen_command)


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
    from services.scorer.history import history_entry, newest_entry, publish_announcement, read_history
    from services.scorer.trust import load_signing_key
    from shared.settings import load_settings

    settings = load_settings()
    key = load_signing_key(args.signing_key) if args.signing_key else None
    try:
        version, announcement = prepare_announcement(args.model, settings, key)
    except ModelRefused as exc:
        print(f"announce: model {args.model} refused ({exc.reason}): {exc}", file=sys.stderr)
        return 2
    if key is None:
        print("announce: UNSIGNED: scorers that trust signing keys will refuse it", file=sys.stderr)

    async def announce() -> None:
        previous = newest_entry(await read_history(settings))
        previous_version = previous.announcement.model_version if previous else ""
        entry = history_entry(announcement, reason=args.reason or "", previous_version=previous_version)
        await publish_announcement(settings, announcement, entry)

    asyncio.run(announce())
    signed = f"signed with key {announcement.key_id}" if key is not None else "unsigned"
    print(
        f"announced model {version} ({announcement.path} in {settings.scorer.models_root}, {signed}) "
        f"on {settings.topic('models')}"
    )
    return 0


def prepare_announcement(model: Path, settings: Any, key: Any | None) -> tuple[str, ModelAnnouncement]:
    """The model's version and its (signed, given ``key``) announcement, after loading it the way a
    scorer will: inside the models root, every hash, a warm-up. ``model`` is a path as the operator
    typed it (relative to the working directory, not to the root). Also used by ``promote`` and
    ``rollback``."""
    from services.scorer.models import announcement_for, load_model_dir
    from services.scorer.trust import sign_announcement

    root = settings.scorer.models_root
    path = Path(os.path.abspath(model))
    # Refuse to announce what a scorer would refuse to load.
    serving = load_model_dir(
        path, root=root, weights_dir=settings.scorer.weights_dir, options=settings.scorer.runtime_options()
    )
    announcement = announcement_for(path, models_root=root)
    if announcement.sha256 != serving.manifest_sha256:
        raise ModelRefused(f"{model} changed while it was being verified", reason="digest_mismatch")
    if key is not None:
        announcement = sign_announcement(announcement, key)
    return serving.version, announcement


def _keygen_command(args: argparse.Namespace) -> int:
    from services.scorer.trust import generate_signing_key

    files = generate_signing_key(args.out, args.name)
    print(f"key {files.key_id}: private {files.private} (keep it secret), public {files.public}")
    return 0
