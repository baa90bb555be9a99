"""Per-class configuration: the defect vocabulary, what may leave the plant, few-shot references."""

from __future__ import annotations

import logging
from pathlib import Path

from services.explainer.pictures import Reference, encode_jpeg, fit_within
from services.explainer.store import safe_component
from shared.engine.images import load_image_file
from shared.errors import ImageError
from shared.settings import EgressPolicy, ExplainerSettings
from shared.telemetry.logging import log_event

log = logging.getLogger("lineguard.explainer.policy")
_REFERENCE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
_REFERENCE_MAX_SIDE = 512


def vocabulary_for(settings: ExplainerSettings, product_class: str) -> list[str]:
    return list(settings.vocabulary.get(product_class, settings.default_vocabulary))


def egress_for(settings: ExplainerSettings, product_class: str) -> EgressPolicy:
    return settings.class_egress.get(product_class, settings.egress)


class ReferenceLibrary:
    """Reference pictures per class from ``<dir>/<class>/{good,defect}/``, loaded once and kept
    small. A missing folder means no references for that class."""

    def __init__(self, root: Path | None, per_class: int) -> None:
        self.root = root
        self.per_class = per_class
        self._cache: dict[str, list[Reference]] = {}

    def for_class(self, product_class: str) -> list[Reference]:
        if self.root is None or self.per_class == 0:
            return []
        if product_class not in self._cache:
            self._cache[product_class] = self._load(product_class)
        return self._cache[product_class]

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
