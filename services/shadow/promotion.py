"""Whether a candidate may be announced, which model a rollback returns to, and when to propose a refit.

Plain functions, no Kafka:

* ``check_report``: a shadow report (``core.Comparison.report``) against the promotion criteria
  (``LINEGUARD_PROMOTION__*``). The report must be about this very candidate (model version and
  manifest digest), recent, made against the model serving now, and its figures must meet every
  criterion. Each check is listed with its figures, passed or not, so a refusal says exactly why.
* ``rollback_target``: from the announcement history, the model announced before the one serving.
* ``refit_evidence`` / ``refit_proposals``: per class, how many normals operators confirmed and
  defects they labelled on the serving model's verdicts; enough of either proposes a refit.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.shadow.core import REPORT_FORMAT
from shared.engine.config import is_valid_class_name
from shared.errors import LineguardError
from shared.messages.schemas import Feedback, ModelHistoryEntry
from shared.settings import PromotionSettings, from_section


class PromotionRefused(LineguardError):
    """A candidate that may not be announced, or a rollback with nowhere to go."""

    default_reason = "promotion_refused"


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Criteria:
    """The promotion criteria (``PromotionSettings``' fields of the same names)."""

    min_frames_compared: int = 500
    min_agreement: float = 0.95
    max_escape_rate_increase: float = 0.0
    max_false_reject_rate_increase: float = 0.0
    max_added_reject_rate: float = 0.01
    min_labelled_defects: int = 0
    min_labelled_goods: int = 0
    max_report_age_h: float = 72.0

    @classmethod
    def from_settings(cls, promotion: PromotionSettings) -> Criteria:
        return from_section(cls, promotion)


def _get(report: Mapping[str, Any], *path: str) -> Any:
    value: Any = report
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            raise PromotionRefused(
                f"the report has no {'.'.join(path)}: not a shadow report this build reads"
            )
        value = value[key]
    return value


def _number(report: Mapping[str, Any], *path: str, optional: bool = False) -> float | None:
    value = _get(report, *path)
    if value is None and optional:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise PromotionRefused(f"the report's {'.'.join(path)} is not a number")
    return float(value)


def _generated_ns(report: Mapping[str, Any]) -> int:
    text = _get(report, "generated_at")
    try:
        stamp = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise PromotionRefused(f"the report's generated_at {str(text)[:40]!r} is not a time") from None
    if stamp.tzinfo is None:
        raise PromotionRefused("the report's generated_at has no time zone")
    return int(stamp.timestamp() * 1e9)


def check_report(
    report: Mapping[str, Any],
    criteria: Criteria,
    *,
    model_version: str,
    sha256: str,
    serving_version: str | None,
    now_ns: int | None = None,
) -> list[Check]:
    """Every check of ``report`` for the candidate ``model_version``/``sha256`` (its manifest digest).

    ``serving_version``: the model serving now (the newest announcement), None if unknown. Raises
    ``PromotionRefused`` for a file that is not a shadow report of this format at all.
    """
    if not isinstance(report, Mapping) or report.get("report_format") != REPORT_FORMAT:
        raise PromotionRefused(
            f"not a shadow report of format {REPORT_FORMAT} (`lineguard shadow` writes one)"
        )
    now_ns = now_ns if now_ns is not None else time.time_ns()
    checks: list[Check] = []

    def check(name: str, passed: bool, detail: str) -> None:
        checks.append(Check(name, passed, detail))

    reported_version = _get(report, "candidate", "model_version")
    reported_sha = _get(report, "candidate", "sha256")
    check(
        "candidate",
        reported_version == model_version and reported_sha == sha256,
        f"report about {reported_version} (manifest {str(reported_sha)[:12]}), candidate is {model_version} "
        f"(manifest {sha256[:12]})",
    )
    age_h = (now_ns - _generated_ns(report)) / 3.6e12
    check(
        "report_age",
        -0.1 <= age_h <= criteria.max_report_age_h,
        f"{age_h:.1f} h old (at most {criteria.max_report_age_h:g} h)",
    )
    versions = _get(report, "serving_versions")
    if not isinstance(versions, Mapping):
        raise PromotionRefused("the report's serving_versions is not a map")
    if serving_version is None:
        check("baseline", True, "serving model unknown (no announcement history): not checked")
    else:
        check(
            "baseline",
            serving_version in versions,
            f"serving now: {serving_version}; the report compared against "
            f"{', '.join(map(str, versions)) or 'none'}",
        )
    compared = _number(report, "frames", "compared") or 0.0
    check(
        "frames_compared",
        compared >= criteria.min_frames_compared,
        f"{compared:.0f} frames compared (at least {criteria.min_frames_compared})",
    )
    agreement = _number(report, "agreement", optional=True)
    check(
        "agreement",
        agreement is not None and agreement >= criteria.min_agreement,
        f"agreement {_show(agreement)} (at least {criteria.min_agreement:g})",
    )
    for rate, labels, min_labelled, max_increase in (
        ("escape_rate", "defects", criteria.min_labelled_defects, criteria.max_escape_rate_increase),
        ("false_reject_rate", "goods", criteria.min_labelled_goods, criteria.max_false_reject_rate_increase),
    ):
        _rate_check(
            checks,
            report,
            rate,
            labelled=_number(report, "labels", labels) or 0.0,
            min_labelled=min_labelled,
            max_increase=max_increase,
            what=f"labelled {labels}",
        )
    added = _number(report, "added_rejects", "rate", optional=True)
    check(
        "added_rejects",
        added is not None and added <= criteria.max_added_reject_rate,
        f"passes the candidate would reject, unlabelled: {_show(added)} of compared frames "
        f"(at most {criteria.max_added_reject_rate:g})",
    )
    return checks


def _rate_check(
    checks: list[Check],
    report: Mapping[str, Any],
    name: str,
    *,
    labelled: float,
    min_labelled: int,
    max_increase: float,
    what: str,
) -> None:
    if labelled < min_labelled:
        checks.append(Check(name, False, f"{labelled:.0f} {what} in the window (at least {min_labelled})"))
        return
    if labelled == 0:
        checks.append(Check(name, True, f"no {what} in the window: not compared"))
        return
    serving = _number(report, "outcomes", "serving", name) or 0.0
    candidate = _number(report, "outcomes", "candidate", name) or 0.0
    checks.append(
        Check(
            name,
            candidate - serving <= max_increase + 1e-9,
            f"{candidate:.4f} vs serving {serving:.4f} on {labelled:.0f} {what} "
            f"(increase at most {max_increase:g})",
        )
    )


def _show(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


def promotion_reason(report: Mapping[str, Any]) -> str:
    """One line for the history: what the shadow run showed."""
    frames = report.get("frames", {})
    outcomes = report.get("outcomes", {})
    labels = report.get("labels", {})

    def escapes(side: str) -> str:
        return _show(outcomes.get(side, {}).get("escape_rate"))

    return (
        f"shadow run {str(report.get('run_id', '?'))[:64]}: {frames.get('compared', 0)} frames compared, "
        f"agreement "
        f"{_show(report.get('agreement'))}; escape rate {escapes('serving')} -> {escapes('candidate')} on "
        f"{labels.get('defects', 0)} labelled defects"
    )


# ---- rollback -----------------------------------------------------------------------------------


def rollback_target(
    entries: Sequence[ModelHistoryEntry], to_version: str | None = None
) -> tuple[ModelHistoryEntry, ModelHistoryEntry]:
    """``(current, target)``: the newest announcement, and the one to announce again: the newest
    earlier announcement of another model, or the newest of ``to_version``."""
    ordered = sorted(enumerate(entries), key=lambda item: (item[1].announcement.announced_at, item[0]))
    if not ordered:
        raise PromotionRefused("the announcement history is empty: nothing to roll back to")
    current = ordered[-1][1]
    serving = current.announcement.model_version
    if to_version is not None:
        if to_version == serving:
            raise PromotionRefused(f"{to_version} is the model announced last already")
        matches = [entry for _, entry in ordered if entry.announcement.model_version == to_version]
        if not matches:
            raise PromotionRefused(f"model {to_version} was never announced (not in the history)")
        return current, matches[-1]
    for _, entry in reversed(ordered[:-1]):
        if entry.announcement.model_version != serving:
            return current, entry
    raise PromotionRefused(f"no model was announced before {serving}: nothing to roll back to")


# ---- refit proposals ----------------------------------------------------------------------------


@dataclass
class ClassEvidence:
    """What operators said about one class's verdicts from the serving model."""

    product_class: str
    confirmed_normals: int = 0  # feedback "good"
    staged_normals: int = 0  # sampled passes in a staging set (labels export --collect-normals)
    labelled_defects: int = 0  # feedback "defect"

    @property
    def normals(self) -> int:
        return self.confirmed_normals + self.staged_normals


@dataclass(frozen=True)
class Proposal:
    product_class: str
    why: str


def refit_evidence(
    feedback: Iterable[Feedback], serving_version: str | None, staged: Mapping[str, int] | None = None
) -> dict[str, ClassEvidence]:
    """Per class, the judgements of the serving model's verdicts (all judgements when the serving
    version is unknown), plus ``staged`` normals per class."""
    evidence: dict[str, ClassEvidence] = {}

    def of(name: str) -> ClassEvidence:
        return evidence.setdefault(name, ClassEvidence(name))

    for judged in feedback:
        if serving_version is not None and judged.model_version != serving_version:
            continue
        if not is_valid_class_name(judged.product_class):  # unknown products are no class to refit
            continue
        if judged.label == "good":
            of(judged.product_class).confirmed_normals += 1
        else:
            of(judged.product_class).labelled_defects += 1
    for name, count in (staged or {}).items():
        of(name).staged_normals += count
    return dict(sorted(evidence.items()))


def refit_proposals(
    evidence: Mapping[str, ClassEvidence], *, min_normals: int, min_defects: int
) -> list[Proposal]:
    """The classes that have enough new evidence for a refit (``min_defects`` 0: defects alone never
    propose one)."""
    proposals = []
    for name, item in evidence.items():
        reasons = []
        if item.normals >= min_normals:
            reasons.append(
                f"{item.normals} confirmed normals ({item.confirmed_normals} judged good, "
                f"{item.staged_normals} staged; at least {min_normals})"
            )
        if min_defects and item.labelled_defects >= min_defects:
            reasons.append(f"{item.labelled_defects} labelled defects (at least {min_defects})")
        if reasons:
            proposals.append(Proposal(name, "; ".join(reasons)))
    return proposals
