"""``lineguard labels export``: operator feedback (and its frames) -> an MVTec-layout labelled set."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

HELP = "turn operator feedback from the console into labelled data for refits"
EXPORT_HELP = "write the feedback topic's judgements, with their frames, as an MVTec-layout labelled set"
EXPORT_DESCRIPTION = (
    "Frames an operator marked defect go to OUT/<class>/test/<type>/ (with a ground_truth mask when "
    "regions were given), frames marked good to OUT/<class>/train/good/; OUT/labels.json lists what was "
    "written and what was skipped. Frames are read from the frames store (LINEGUARD_LABELS__FRAMES_DIR), "
    "else the defects topic (3 days) or the frames topic (1 hour). `lineguard fit --labelled-defects-dir "
    'OUT` trains on it. See docs/operations.md, "Labels into models".'
)


def _export(args: argparse.Namespace) -> int:
    from services.labels.service import LabelExport
    from shared.lifecycle import start_service

    settings = start_service("labels")
    updates: dict[str, Any] = {}
    if args.normal_below is not None:
        updates["normal_below"] = args.normal_below
    if args.normals_per_class is not None:
        updates["normals_per_class"] = args.normals_per_class
    if updates:
        from shared.settings import LabelsSettings, config_error

        try:
            labels = LabelsSettings.model_validate({**settings.labels.model_dump(), **updates})
        except ValueError as exc:
            raise config_error(str(exc).splitlines()[0]) from None
        settings = settings.model_copy(update={"labels": labels})
    export = LabelExport(settings, frames_dir=args.frames_dir)
    summary = asyncio.run(export.run(args.out, args.collect_normals))
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
        return 0
    defects = sum(sum(types.values()) for types in summary.defects.values())
    print(
        f"{summary.feedback} judgements: {defects} defect frames ({summary.masks} with masks), "
        f"{sum(summary.goods.values())} good frames, {len(summary.skipped)} skipped -> {args.out}"
    )
    for name, types in sorted(summary.defects.items()):
        print(f"  {name}: " + ", ".join(f"{t} {n}" for t, n in sorted(types.items())))
    reasons: dict[str, int] = {}
    for item in summary.skipped:
        reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
    if reasons:
        print("  skipped: " + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())))
    if args.collect_normals:
        print(f"{sum(summary.normals.values())} confirmed normals sampled -> {args.collect_normals}")
    return 0


def register(subparsers: Any) -> None:
    labels = subparsers.add_parser("labels", help=HELP, description=HELP)
    commands = labels.add_subparsers(dest="labels_command", required=True, metavar="COMMAND")
    export = commands.add_parser("export", help=EXPORT_HELP, description=EXPORT_DESCRIPTION)
    export.add_argument("--out", type=Path, required=True, help="the labelled set (replaced whole)")
    export.add_argument(
        "--frames-dir", type=Path, help="frames store to read first (LINEGUARD_LABELS__FRAMES_DIR)"
    )
    export.add_argument(
        "--collect-normals",
        type=Path,
        metavar="STAGING",
        help="also sample passes far below the threshold into STAGING/<class>/train/good (replaced whole)",
    )
    export.add_argument(
        "--normal-below", type=float, help="normalised score at most (LINEGUARD_LABELS__NORMAL_BELOW)"
    )
    export.add_argument(
        "--normals-per-class", type=int, help="sample size per class (LINEGUARD_LABELS__NORMALS_PER_CLASS)"
    )
    export.add_argument("--json", action="store_true", help="print the summary as JSON")
    export.set_defaults(handler=_export)
