"""Per-class configuration: the defect vocabulary, what may leave the plant, few-shot references."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from services.explainer import metrics
from services.explainer.pictures import Reference, encode_jpeg, fit_within
from services.explainer.store import safe_component
from shared.engine.config import UNKNOWN
from shared.engine.images import load_image_file
from shared.errors import ImageError
from shared.messages.schemas import Verdict
from shared.settings import EgressPolicy, ExplainerSettings
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.explainer.policy")
_REFERENCE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
_REFERENCE_MAX_SIDE = 512
MAX_REFERENCE_CLASSES = 64  # classes whose reference pictures stay in memory


def vocabulary_for(settings: ExplainerSettings, product_class: str) -> list[str]:
    return list(settings.vocabulary.get(product_class, settings.default_vocabulary))


_STRICTNESS = (EgressPolicy.FULL, EgressPolicy.CROP, EgressPolicy.NONE)  # least to most strict


def strictest(policies: Iterable[EgressPolicy]) -> EgressPolicy:
    return max(policies, key=_STRICTNESS.index)


def egress_for(settings: ExplainerSettings, verdict: Verdict) -> EgressPolicy:
    """What of this frame may leave the plant. Fails closed: a class gets its own policy only
    when it has one (``class_egress``) and the image confirmed the class; anything else (a class
    renamed by a new model, ``unknown`` unless listed itself, a camera's product hint the router
    contradicted, reported with routing confidence 0) gets ``unlisted_egress``, or when that is
    unset the strictest policy configured (``egress`` and every ``class_egress`` value)."""
    name = verdict.product_class
    confirmed = name == UNKNOWN or verdict.route_confidence > 0.0
    if confirmed and name in settings.class_egress:
        return settings.class_egress[name]
    if settings.unlisted_egress is not None:
        return settings.unlisted_egress
    return strictest([settings.egress, *settings.class_egress.values()])


class ReferenceLibrary:
    """Reference pictures per class from ``<dir>/<class>/{good,defect}/``, loaded once and kept
    small. A missing folder means no references for that class."""

    def __init__(self, root: Path | None, per_class: int) -> None:
        self.root = root
        self.per_class = per_class
        # Keyed by a class name off the wire: least recently used first, capped.
        self._cache: dict[str, list[Reference]] = {}

    def for_class(self, product_class: str) -> list[Reference]:
        if self.root is None or self.per_class == 0:
            return []
        references = self._cache.pop(product_class, None)
        if references is None:
            references = self._load(product_class)
        self._cache[product_class] = references
        while len(self._cache) > MAX_REFERENCE_CLASSES:
            del self._cache[next(iter(self._cache))]
            metrics.EVICTIONS.labels("reference_classes").inc()
        return references

    def _load(self, product_class: str) -> list[Reference]:
        assert self.root is not None
        folder = self.root / safe_component(product_class)  # the class name comes off the wire
        references: list[Reference] = []
        for sub, label in (("good", "normal"), ("defect", "defective")):
            files = (
                sorted(
                    p
                    for p in (folder / sub).glob("*")
                    if p.suffix.lower() in _REFERENCE_SUFFIXES and p.is_file()
                )
                if (folder / sub).is_dir()
                else []
            )
            for path in files[: self.per_class]:
                try:
                    image = load_image_file(path)
                except ImageError as exc:
                    log_event(log, "reference_unreadable", logging.WARNING, path=str(path), reason=exc.reason)
                    continue
                references.append(Reference(label, encode_jpeg(fit_within(image, _REFERENCE_MAX_SIDE))))
        return references
