"""``lineguard explainer``: the explainer's command."""

from __future__ import annotations

import argparse
import logging

from services.explainer.service import SERVICE, run_explainer
from shared.errors import LineguardError
from shared.lifecycle import run_until_signalled
from shared.settings import load_settings
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.explainer.service")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explainer",
        help="write defect reports with a vision-language model (consumes the defects topic)",
        description="Consume defect events and write a report for each: VLM-written when an "
        "OpenAI-compatible endpoint is configured (LINEGUARD_EXPLAINER__BASE_URL), otherwise a "
        "marked fallback report from local signals. See docs/explainer.md.",
    )
    parser.add_argument(
        "--max-events", type=int, default=0, help="stop after this many events (0: run until stopped)"
    )
    parser.set_defaults(handler=run_command)


def quiet_http_loggers() -> None:
    """At DEBUG the HTTP clients log whole request bodies (base64 images) and headers: never."""
    for noisy in ("openai", "httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_command(args: argparse.Namespace) -> int:
    from services.explainer import metrics
    from shared.telemetry.logging import setup_logging
    from shared.telemetry.metrics import start_metrics_server
    from shared.telemetry.tracing import setup_tracing

    settings = load_settings()
    setup_logging(SERVICE, settings.log_level)
    quiet_http_loggers()
    setup_tracing(SERVICE, settings.otel_exporter)
    start_metrics_server(settings.metrics_port, metrics.REGISTRY)
    try:
        run_until_signalled(lambda stop: run_explainer(settings, stop, max_events=max(0, args.max_events)))
    except LineguardError as exc:  # configuration the settings object cannot see (a key file, ...)
        log_event(log, "explainer_config_error", logging.ERROR, detail=str(exc))
        return 2
    return 0
