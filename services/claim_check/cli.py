"""``lineguard claim-check gc``: delete claim checks past their retention (run it hourly from cron).

The store is ``LINEGUARD_CLAIM_CHECK__URL``; whole hour folders go, once the hour ended more than
``LINEGUARD_CLAIM_CHECK__RETENTION_S`` ago (default 3 days, the ``defects`` topic's retention, so
every defect event still on the topic finds its frame). Nothing else in the store is touched.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from shared.errors import ConfigError


def register(subparsers: Any) -> None:
    claim = subparsers.add_parser("claim-check", help="upkeep of the claim-check store of large frames")
    actions = claim.add_subparsers(dest="claim_check_action", required=True, metavar="ACTION")
    text = "delete claim checks older than the retention (whole hours; hourly from cron)"
    gc = actions.add_parser("gc", help=text, description=text)
    gc.add_argument(
        "--older-than-s",
        type=float,
        default=None,
        help="retention in seconds (default: LINEGUARD_CLAIM_CHECK__RETENTION_S, 3 days)",
    )
    gc.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing (default off)")
    gc.set_defaults(handler=_gc)


def _gc(args: argparse.Namespace) -> int:
    from shared.frames_store import ClaimStore
    from shared.settings import load_settings

    settings = load_settings()
    store = ClaimStore.from_settings(settings)
    if store is None:
        raise ConfigError("no claim-check store: set LINEGUARD_CLAIM_CHECK__URL")
    retention = settings.claim_check.retention_s if args.older_than_s is None else args.older_than_s
    if retention < 0:
        raise ConfigError("--older-than-s must not be negative")
    done = store.collect_garbage(retention, dry_run=args.dry_run)
    summary = {
        "store": store.url,
        "dry_run": args.dry_run,
        "hours": done.hours,
        "objects": done.objects,
        "bytes": done.bytes,
    }
    print(json.dumps(summary))
    return 0
