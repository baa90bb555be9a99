"""``lineguard alerts``: forward operator alerts from the ``alerts`` topic to a webhook."""

from __future__ import annotations

import argparse
from typing import Any

from shared.lifecycle import run_service

HELP = "forward operator alerts from the alerts topic to a webhook (JSON, Slack, Teams)"
DESCRIPTION = (
    "De-duplicates and rate-limits alerts, retries failed deliveries with backoff and dead-letters what "
    "cannot be delivered; offsets are committed only after delivery, and a ledger on disk keeps a "
    "restart from sending an alert twice. Without a webhook URL, alerts are logged only. Configured "
    "by LINEGUARD_ALERTS__* variables (see docs/operations.md)."
)


def _run(args: argparse.Namespace) -> int:
    from services.alerts import metrics
    from services.alerts.core import webhook_url
    from services.alerts.service import SERVICE, AlertsService

    return run_service(
        SERVICE, lambda settings, stop: AlertsService(settings).run(stop), metrics.REGISTRY, check=webhook_url
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("alerts", help=HELP, description=DESCRIPTION)
    parser.set_defaults(handler=_run)
