"""``lineguard shadow``, ``promote``, ``rollback`` and ``loop check``.

Heavy imports (torch, aiokafka, the engine) happen inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from services.arguments import non_negative_int, positive_int
from shared.errors import ConfigError, ModelRefused

SHADOW_HELP = "score frames with a candidate model beside the serving one, and report the difference"
SHADOW_DESCRIPTION = (
    "Score live or replayed frames from the frames topic with a candidate model, in the shadow's own "
    "consumer group (LINEGUARD_SHADOW__GROUP_ID; never the scorer's), write its verdicts to "
    "shadow-verdicts, and compare them with the serving model's verdicts (joined on frame id) and the "
    "operators' feedback: agreement, decisions that would change, escapes and false rejects on "
    "labelled frames, latency. Writes report.json (for `lineguard promote`) and report.html. "
    "Nothing the line acts on is written."
)
PROMOTE_HELP = "announce a candidate model only if its shadow report meets the promotion criteria"
PROMOTE_DESCRIPTION = (
    "Check a shadow report (`lineguard shadow`) against the promotion criteria (LINEGUARD_PROMOTION__*): "
    "it must be about this candidate (model version and manifest digest), recent, made against the model "
    "serving now, with enough frames compared, enough agreement, no more escapes or false rejects on "
    "labelled frames and few added rejects. Then announce it, signed, on the models topic and in the "
    "announcement history. Every check is printed; a failed one announces nothing."
)
ROLLBACK_HELP = "announce again the model that was announced before the current one (from the history)"
ROLLBACK_DESCRIPTION = (
    "Read the announcement history (model-history topic), take the model announced before the newest "
    "one (or --to VERSION), verify its directory is still the one announced then (manifest digest), and "
    "announce it again with a new time and signature. Scorers take it like any announcement."
)
LOOP_HELP = "the feedback loop: propose a refit when operators confirmed enough normals or defects"
CHECK_HELP = "count operators' judgements of the serving model per class, and propose refits"
CHECK_DESCRIPTION = (
    "Count, per class, the normals operators confirmed (feedback 'good', plus a staging set's sampled "
    "normals with --normals) and the defects they labelled, on the serving model's verdicts. A class "
    "with at least LINEGUARD_PROMOTION__REFIT_MIN_NORMALS normals (or REFIT_MIN_DEFECTS defects) gets "
    "a refit proposal: a log line, the lineguard_loop_refit_proposed metric (alert "
    "LineguardRefitProposed) and the commands to run: export, fit, shadow, promote."
)


def parse_time(text: str) -> int:
    """An ISO 8601 time as ns since the epoch; without a zone it is this machine's local time."""
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        example = "2025-06-01T14:30:00+02:00"
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time, e.g. {example}") from None
    if stamp.tzinfo is None:
        stamp = stamp.astimezone()
    return int(stamp.timestamp() * 1e9)


def register(subparsers: Any) -> None:
    shadow = subparsers.add_parser("shadow", help=SHADOW_HELP, description=SHADOW_DESCRIPTION)
    shadow.add_argument("--model", type=Path, required=True, help="the candidate model directory")
    start = shadow.add_mutually_exclusive_group(required=True)
    start.add_argument(
        "--from-offset",
        type=non_negative_int,
        metavar="N",
        help="replay every frames partition from offset N",
    )
    start.add_argument(
        "--from-time", type=parse_time, metavar="ISO", help="replay frames recorded from this time"
    )
    start.add_argument("--live", action="store_true", help="score new frames as they arrive")
    shadow.add_argument(
        "--until",
        type=parse_time,
        metavar="ISO",
        help="replay: frames recorded up to this time (default: up to the end when the run started); "
        "live: stop at this time",
    )
    shadow.add_argument("--duration", type=float, metavar="S", help="live: stop after S seconds")
    shadow.add_argument(
        "--max-frames",
        type=positive_int,
        metavar="N",
        help="stop after N frames (LINEGUARD_SHADOW__MAX_FRAMES)",
    )
    shadow.add_argument(
        "--exclude-trained",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a labelled set the candidate was fitted on (repeatable): its frames' labels are left out of "
        "the escape and false-reject counts",
    )
    shadow.add_argument(
        "--report",
        type=Path,
        metavar="FILE.json",
        help="where to write the report (default: LINEGUARD_SHADOW__REPORT_DIR/<version>-<time>/report.json; "
        "the HTML beside it)",
    )
    shadow.set_defaults(handler=_shadow_command)

    promote = subparsers.add_parser("promote", help=PROMOTE_HELP, description=PROMOTE_DESCRIPTION)
    promote.add_argument("--model", type=Path, required=True, help="the candidate model directory")
    promote.add_argument("--report", type=Path, required=True, help="its shadow report (report.json)")
    _signing_arguments(promote)
    promote.add_argument("--dry-run", action="store_true", help="check only; announce nothing")
    promote.set_defaults(handler=_promote_command)

    rollback = subparsers.add_parser("rollback", help=ROLLBACK_HELP, description=ROLLBACK_DESCRIPTION)
    rollback.add_argument("--to", metavar="VERSION", help="roll back to this model version instead")
    rollback.add_argument("--reason", help="why, for the history")
    _signing_arguments(rollback)
    rollback.set_defaults(handler=_rollback_command)

    loop = subparsers.add_parser("loop", help=LOOP_HELP, description=LOOP_HELP)
    loop_commands = loop.add_subparsers(dest="loop_command", required=True, metavar="COMMAND")
    check = loop_commands.add_parser("check", help=CHECK_HELP, description=CHECK_DESCRIPTION)
    check.add_argument(
        "--normals",
        type=Path,
        metavar="STAGING",
        help="a staging set from `lineguard labels export --collect-normals STAGING` (its normals.json)",
    )
    check.add_argument(
        "--watch",
        action="store_true",
        help="check every LINEGUARD_PROMOTION__REFIT_CHECK_INTERVAL_S and export metrics until stopped",
    )
    check.add_argument("--json", action="store_true", help="print the counts and proposals as JSON")
    check.set_defaults(handler=_check_command)


def _signing_arguments(parser: argparse.ArgumentParser) -> None:
    signing = parser.add_mutually_exclusive_group()
    signing.add_argument(
        "--signing-key",
        type=Path,
        help="Ed25519 private key from `lineguard model keygen` (default: LINEGUARD_PROMOTION__SIGNING_KEY)",
    )
    signing.add_argument(
        "--unsigned", action="store_true", help="announce unsigned (only scorers that trust no key take it)"
    )


def _signing_key(args: argparse.Namespace, settings: Any) -> Any | None:
    from services.scorer.trust import load_signing_key

    if args.unsigned:
        print(f"{args.command}: UNSIGNED: scorers that trust signing keys will refuse it", file=sys.stderr)
        return None
    path = args.signing_key or settings.promotion.signing_key
    if path is None:
        raise ConfigError(
            "no signing key: pass --signing-key FILE or set LINEGUARD_PROMOTION__SIGNING_KEY (or --unsigned "
            "for scorers that trust no key)"
        )
    return load_signing_key(path)


# ---- shadow ---------------------------------------------------------------------------------------


def _trained_stems(folders: list[Path]) -> set[str]:
    """The file stems of a labelled set's frames (``<class>/test/<type>/*.png``, ``<class>/train/good``)."""
    stems: set[str] = set()
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"--exclude-trained {folder}: not a folder")
        for path in folder.glob("*/test/*/*.png"):
            stems.add(path.stem)
        for path in folder.glob("*/train/good/*.png"):
            stems.add(path.stem)
    return stems


def _shadow_command(args: argparse.Namespace) -> int:
    from services.shadow import metrics
    from services.shadow.core import Candidate
    from services.shadow.service import ShadowRun, Window, check_shadow_settings
    from shared.lifecycle import run_until_signalled, start_service

    settings = start_service("shadow", metrics.REGISTRY)
    window = Window(
        from_offset=args.from_offset,
        from_time_ns=args.from_time,
        live=args.live,
        until_ns=args.until,
        duration_s=args.duration,
        max_frames=args.max_frames or settings.shadow.max_frames,
    )
    trained = _trained_stems(args.exclude_trained)
    check_shadow_settings(settings)
    import torch

    from services.scorer.models import load_model_dir

    torch.set_num_threads(settings.shadow.torch_threads)
    try:
        loaded = load_model_dir(args.model, weights_dir=settings.scorer.weights_dir)
    except ModelRefused as exc:
        print(f"shadow: model {args.model} refused ({exc.reason}): {exc}", file=sys.stderr)
        return 2
    assert loaded.manifest_sha256 is not None
    candidate = Candidate(loaded.version, loaded.manifest_sha256, str(args.model))
    run = ShadowRun(settings, loaded.model, candidate, window, trained=trained)
    report = run_until_signalled(run.run)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = args.report or settings.shadow.report_dir / f"{loaded.version}-{stamp}" / "report.json"
    from services.shadow.report import write_report

    json_path, html_path = write_report(report, path)
    _print_summary(report)
    print(f"report: {json_path} and {html_path}")
    return 0


def _print_summary(report: dict[str, Any]) -> None:
    frames, outcomes, labels = report["frames"], report["outcomes"], report["labels"]

    def show(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    print(
        f"candidate {report['candidate']['model_version']}: {frames['scored']} frames scored, "
        f"{frames['compared']} compared with the serving model "
        f"({frames['without_serving_verdict']} without a serving verdict), "
        f"agreement {show(report['agreement'])}"
    )
    changes = ", ".join(f"{change} {count}" for change, count in report["changes"].items()) or "none"
    print(f"  decisions that would change: {changes}")
    print(
        f"  on {labels['defects']} labelled defects and {labels['goods']} labelled goods: escape rate "
        f"{show(outcomes['serving']['escape_rate'])} -> {show(outcomes['candidate']['escape_rate'])}, "
        f"false-reject rate {show(outcomes['serving']['false_reject_rate'])} -> "
        f"{show(outcomes['candidate']['false_reject_rate'])}"
    )


# ---- promote and rollback -------------------------------------------------------------------------


def _promote_command(args: argparse.Namespace) -> int:
    from services.scorer.cli import prepare_announcement
    from services.scorer.history import history_entry, newest_announcement, publish_announcement
    from services.shadow.promotion import Criteria, PromotionRefused, check_report, promotion_reason
    from services.shadow.report import read_report
    from shared.lifecycle import start_service

    settings = start_service("promote")
    key = None if args.dry_run else _signing_key(args, settings)
    report, report_sha256 = read_report(args.report)
    try:
        version, announcement = prepare_announcement(args.model, settings, key)
    except ModelRefused as exc:
        print(f"promote: model {args.model} refused ({exc.reason}): {exc}", file=sys.stderr)
        return 2
    serving, _ = asyncio.run(newest_announcement(settings))
    serving_version = serving.model_version if serving is not None else None
    checks = check_report(
        report,
        Criteria.from_settings(settings.promotion),
        model_version=version,
        sha256=announcement.sha256,
        serving_version=serving_version,
    )
    for item in checks:
        print(f"  {'pass' if item.passed else 'FAIL'}  {item.name}: {item.detail}")
    if serving_version == version:
        raise PromotionRefused(f"{version} is the model announced last already (nothing announced)")
    failed = [item.name for item in checks if not item.passed]
    if failed:
        raise PromotionRefused(f"promotion of {version} refused: {', '.join(failed)} (nothing announced)")
    if args.dry_run:
        print(f"promote: {version} meets every criterion (dry run: nothing announced)")
        return 0
    entry = history_entry(
        announcement,
        action="promote",
        reason=promotion_reason(report),
        report_sha256=report_sha256,
        previous_version=serving_version or "",
    )
    asyncio.run(publish_announcement(settings, announcement, entry))
    signed = f"signed with key {announcement.key_id}" if key is not None else "unsigned"
    print(f"promoted model {version} ({announcement.path}, {signed}); previously {serving_version or 'none'}")
    return 0


def _rollback_command(args: argparse.Namespace) -> int:
    from services.scorer.cli import prepare_announcement
    from services.scorer.history import history_entry, publish_announcement, read_history
    from services.shadow.promotion import PromotionRefused, rollback_target
    from shared.lifecycle import start_service

    settings = start_service("rollback")
    key = _signing_key(args, settings)
    current, target = rollback_target(asyncio.run(read_history(settings)), args.to)
    wanted = target.announcement
    directory = Path(os.path.abspath(settings.scorer.models_root / wanted.path))
    try:
        version, announcement = prepare_announcement(directory, settings, key)
    except ModelRefused as exc:
        print(
            f"rollback: model {wanted.model_version} at {directory} refused ({exc.reason}): {exc}",
            file=sys.stderr,
        )
        return 2
    if (version, announcement.sha256) != (wanted.model_version, wanted.sha256):
        raise PromotionRefused(
            f"{directory} now holds {version} (manifest {announcement.sha256[:12]}), not the "
            f"{wanted.model_version} (manifest {wanted.sha256[:12]}) announced then: nothing announced"
        )
    previous = current.announcement.model_version
    reason = f"rollback from {previous}" + (f": {args.reason}" if args.reason else "")
    entry = history_entry(announcement, action="rollback", reason=reason, previous_version=previous)
    asyncio.run(publish_announcement(settings, announcement, entry))
    signed = f"signed with key {announcement.key_id}" if key is not None else "unsigned"
    print(f"rolled back from {previous} to {version} ({announcement.path}, {signed})")
    return 0


# ---- loop check -----------------------------------------------------------------------------------


def _staged_normals(staging: Path | None) -> dict[str, int]:
    if staging is None:
        return {}
    from services.labels.core import NORMALS_SUMMARY_FILE

    path = staging / NORMALS_SUMMARY_FILE
    try:
        body = json.loads(path.read_text())
        normals = body["normals"]
        return {str(name): int(count) for name, count in normals.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(
            f"--normals {staging}: no readable {NORMALS_SUMMARY_FILE} (from labels export)"
        ) from None


def _check_command(args: argparse.Namespace) -> int:
    from services.shadow import metrics
    from services.shadow.refits import check_refits, watch_refits
    from shared.lifecycle import run_until_signalled, start_service

    settings = start_service("loop", metrics.LOOP_REGISTRY if args.watch else None)
    if args.watch:
        return run_until_signalled(
            lambda stop: watch_refits(settings, lambda: _staged_normals(args.normals), stop)
        )
    result = asyncio.run(check_refits(settings, _staged_normals(args.normals)))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(
        f"serving model: {result.serving_version or 'unknown (nothing announced): every judgement counted'}"
    )
    for item in result.evidence.values():
        print(
            f"  {item.product_class}: {item.confirmed_normals} judged good, "
            f"{item.staged_normals} staged normals, {item.labelled_defects} labelled defects"
        )
    if not result.proposals:
        print("no refit proposed")
    for proposal in result.proposals:
        print(f"refit proposed for {proposal.product_class}: {proposal.why}")
    if result.proposals:
        print("next:\n" + "\n".join(f"  {line}" for line in result.pipeline()))
    return 0
