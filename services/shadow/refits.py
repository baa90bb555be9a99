"""``lineguard loop check``: when operators have confirmed enough normals (or labelled enough defects)
of a class on the serving model's verdicts, propose a refit.

A proposal is a WARNING log line ``refit_proposed`` (class, counts, serving model), the gauge
``lineguard_loop_refit_proposed{product_class}`` = 1 (alert ``LineguardRefitProposed``) and the
commands that carry it out: export the labels, fit, shadow, promote. Nothing is refitted or announced
by this check: a candidate reaches the line only through ``lineguard promote``, after a shadow run
shows it better on the line's own frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from services.labels.core import latest_feedback
from services.scorer.history import newest_announcement
from services.shadow import metrics
from services.shadow.promotion import ClassEvidence, Proposal, refit_evidence, refit_proposals
from shared.errors import MessageError
from shared.kafka.reading import read_topic
from shared.messages.codec import decode
from shared.messages.schemas import Feedback
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.loop")

PIPELINE = (
    "lineguard labels export --out labelled/ --collect-normals staging/",
    "# look the staging set over; add labelled/<class>/train/good and the good staged normals to the normals",
    "lineguard fit --data normals/ --labelled-defects-dir labelled/ --out models/<new>",
    "lineguard shadow --model models/<new> --from-time <a time after the export> --exclude-trained labelled/",
    "lineguard promote --model models/<new> --report var/shadow/<new>-<time>/report.json",
)


@dataclass
class RefitCheck:
    serving_version: str | None
    evidence: dict[str, ClassEvidence] = field(default_factory=dict)
    proposals: list[Proposal] = field(default_factory=list)

    def pipeline(self) -> list[str]:
        return list(PIPELINE)

    def to_dict(self) -> dict[str, Any]:
        return {
            "serving_version": self.serving_version,
            "classes": {name: asdict(item) for name, item in self.evidence.items()},
            "proposals": [asdict(proposal) for proposal in self.proposals],
            "pipeline": self.pipeline() if self.proposals else [],
        }


async def _latest_feedback(settings: Any) -> dict[str, Feedback]:
    records: list[tuple[bytes | None, Feedback | None]] = []
    async for record in read_topic(settings, "feedback", settings.labels.read_timeout_s):
        if record.value is None:
            records.append((record.key, None))
            continue
        try:
            records.append((record.key, decode(record.value, Feedback)))
        except MessageError:
            continue
    return latest_feedback(records)


async def check_refits(settings: Any, staged: Mapping[str, int]) -> RefitCheck:
    """Count the judgements of the serving model per class, set the metrics, log each proposal."""
    serving, _ = await newest_announcement(settings)
    serving_version = serving.model_version if serving is not None else None
    feedback = await _latest_feedback(settings)
    cfg = settings.promotion
    evidence = refit_evidence(feedback.values(), serving_version, staged)
    proposals = refit_proposals(
        evidence, min_normals=cfg.refit_min_normals, min_defects=cfg.refit_min_defects
    )
    proposed = {proposal.product_class for proposal in proposals}
    for name, item in evidence.items():
        metrics.CONFIRMED_NORMALS.labels(name).set(item.normals)
        metrics.LABELLED_DEFECTS.labels(name).set(item.labelled_defects)
        metrics.REFIT_PROPOSED.labels(name).set(1 if name in proposed else 0)
    for proposal in proposals:
        log_event(
            log,
            "refit_proposed",
            logging.WARNING,
            product_class=proposal.product_class,
            why=proposal.why,
            serving=serving_version,
            next=" && ".join(line for line in PIPELINE if not line.startswith("#")),
        )
    return RefitCheck(serving_version, evidence, proposals)


async def watch_refits(settings: Any, staged: Callable[[], Mapping[str, int]], stop: asyncio.Event) -> int:
    """``check_refits`` every ``refit_check_interval_s`` until ``stop``; a failed check is logged and
    counted, and the next one tries again."""
    interval = settings.promotion.refit_check_interval_s
    log_event(log, "refit_checks_started", interval_s=interval)
    while not stop.is_set():
        try:
            result = await check_refits(settings, staged())
            metrics.CHECKS.labels("ok").inc()
            log_event(
                log,
                "refit_checked",
                serving=result.serving_version,
                classes=len(result.evidence),
                proposed=[p.product_class for p in result.proposals],
            )
        except Exception as exc:  # the broker away, a bad file: the next check tries again
            metrics.CHECKS.labels("failed").inc()
            log_event(log, "refit_check_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
    return 0
