"""The inspection model at work: one shared backbone, routing, per-class patch scorers, decisions.

``InspectionModel.score_batch`` is the hot path the line service calls per micro-batch: one
batched backbone forward, routing by global embeddings, one scorer call per routed class, then
small per-frame post-processing. Fitting (``shared.engine.fitting``) and saving/loading
(``shared.engine.persistence``) build models; this module only uses them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.engine.calibration import f1_optimal_threshold
from shared.engine.class_model import ClassModel, maps_and_scores, raw_maps
from shared.engine.config import UNKNOWN, Decision, FitConfig, ScoreResult
from shared.engine.features import FeatureExtractor
from shared.engine.images import validate_rgb
from shared.engine.postprocess import Normaliser, find_regions, resize_map
from shared.engine.routing import RouteDecision, Router
from shared.engine.scorers.base import PatchScores, ScoreInput
from shared.errors import ConfigError
from shared.limits import CLASS_NAME_MAX


@dataclass(frozen=True)
class ClassTarget:
    """Which class a frame is scored against (``index``) and what the verdict reports: the class
    (or ``UNKNOWN``), the route's confidence, whether the camera's hint disagreed, and why."""

    index: int
    product_class: str
    confidence: float
    hint_mismatch: bool
    reason: str


class InspectionModel:
    def __init__(
        self,
        config: FitConfig,
        extractor: FeatureExtractor,
        class_models: list[ClassModel],
        *,
        version: str,
        weights_sha256: str | None,
        weights_path: str | None,
        metadata: dict[str, Any],
    ) -> None:
        self.config = config
        self.extractor = extractor
        self.class_models = class_models
        self.version = version
        self.classes = [model.name for model in class_models]
        self.backbone_name = config.backbone
        self.input_size = config.input_size
        self.weights_sha256 = weights_sha256
        self.weights_path = weights_path
        self.metadata = metadata  # created_at, training_data, fit_seconds (kept in the manifest)
        self.router = Router(
            np.stack([model.prototype for model in class_models]),
            np.array([model.unknown_threshold for model in class_models]),
        )
        self._class_index = {name: i for i, name in enumerate(self.classes)}
        # Confirmed normals a cold-start class needs before its verdicts are pass/reject; None: as
        # each class's manifest says. The scorer sets it from its settings (review_until_confirmed).
        self.review_until_confirmed: int | None = None

    def embed(self, images: list[np.ndarray]) -> tuple[np.ndarray, tuple[int, int]]:
        """``(B, N, D)`` patch features of ``images`` as float32 numpy."""
        features, grid = self.extractor(images)
        return features.numpy(), grid

    def score_batch(
        self,
        images: list[np.ndarray],
        hints: list[str | None] | None = None,
        timings: dict[str, float] | None = None,
        frame_sizes: list[tuple[int, int]] | None = None,
    ) -> list[ScoreResult]:
        """Score a batch of ``HxWx3 uint8`` RGB frames; ``hints`` name the expected product.

        ``frame_sizes``: ``(height, width)`` of the frames the images were decoded from when they
        were decoded reduced (large frames, ``shared.messages.pixels``); regions are then in the
        frame's coordinates. Each anomaly map has its image's resolution.
        """
        if hints is None:
            hints = [None] * len(images)
        if len(hints) != len(images):
            raise ValueError(f"{len(hints)} hints for {len(images)} images")
        if frame_sizes is None:
            frame_sizes = [(image.shape[0], image.shape[1]) for image in images]
        if len(frame_sizes) != len(images) or any(min(size) < 1 for size in frame_sizes):
            raise ValueError(f"{len(frame_sizes)} frame sizes for {len(images)} images, each positive")
        for image in images:
            validate_rgb(image)
        if not images:
            return []
        clock = time.perf_counter()
        features, grid = self.embed(images)
        after_backbone = time.perf_counter()

        routes = self.router.route(features.mean(axis=1))
        targets = [self._resolve_class(route, hint) for route, hint in zip(routes, hints, strict=True)]
        groups: list[tuple[list[int], PatchScores]] = []
        for class_index in sorted({target.index for target in targets}):
            rows = [i for i, target in enumerate(targets) if target.index == class_index]
            batch = ScoreInput(features[rows], grid, [images[i] for i in rows])
            groups.append((rows, self.class_models[class_index].scorer.score(batch)))
        after_knn = time.perf_counter()

        maps = np.empty((len(images), self.input_size, self.input_size), dtype=np.float32)
        raw_scores = np.empty(len(images), dtype=np.float64)
        for rows, patch in groups:
            maps[rows], raw_scores[rows] = maps_and_scores(patch, self.config)
        results = []
        for i, (image, (frame_height, frame_width), target) in enumerate(
            zip(images, frame_sizes, targets, strict=True)
        ):
            class_model = self.class_models[target.index]
            reason = target.reason
            raw = float(raw_scores[i])
            score = float(class_model.normaliser(raw))
            normalised_map = class_model.normaliser(maps[i])
            height, width = image.shape[:2]
            decision = Decision.REJECT if score >= 0.5 else Decision.PASS
            if target.product_class == UNKNOWN or (target.hint_mismatch and decision == Decision.PASS):
                decision = Decision.REVIEW
            elif (cold_start := class_model.awaiting_confirmation(self.review_until_confirmed)) is not None:
                said = f"{cold_start}; the model says {decision}"
                reason = f"{reason}; {said}" if reason else said
                decision = Decision.REVIEW
            results.append(
                ScoreResult(
                    product_class=target.product_class,
                    route_confidence=target.confidence,
                    hint_mismatch=target.hint_mismatch,
                    raw_score=raw,
                    score=score,
                    threshold=class_model.threshold,
                    decision=decision,
                    reason=reason,
                    regions=find_regions(normalised_map, frame_height, frame_width, maps[i]),
                    anomaly_map=resize_map(normalised_map, height, width),
                    raw_map=maps[i],
                )
            )
        done = time.perf_counter()
        if timings is not None:
            for key, seconds in (
                ("backbone", after_backbone - clock),
                ("knn", after_knn - after_backbone),
                ("postprocess", done - after_knn),
            ):
                timings[key] = timings.get(key, 0.0) + seconds
        return results

    def _resolve_class(self, route: RouteDecision, hint: str | None) -> ClassTarget:
        """The class a frame is scored against and reported as, from its route and hint."""
        nearest_name = self.classes[route.nearest]
        # Hints come off the wire: quote at most a class name's length of one.
        shown = hint if hint is None or len(hint) <= CLASS_NAME_MAX else hint[:CLASS_NAME_MAX] + "..."
        if hint is not None and hint in self._class_index:
            hinted = self._class_index[hint]
            if route.unknown:
                reason = f"hint '{hint}' but the image matches no known class"
                return ClassTarget(hinted, hint, 0.0, True, reason)
            if route.nearest != hinted:
                return ClassTarget(hinted, hint, 0.0, True, f"hint '{hint}' but routed to '{nearest_name}'")
            return ClassTarget(hinted, hint, route.confidence, False, "")
        mismatch = hint is not None
        prefix = f"hint '{shown}' is not a class of this model; " if mismatch else ""
        if route.unknown:
            reason = (
                f"{prefix}unknown product (nearest class '{nearest_name}' at distance {route.distance:.3f})"
            )
            return ClassTarget(route.nearest, UNKNOWN, route.confidence, mismatch, reason)
        return ClassTarget(route.nearest, nearest_name, route.confidence, mismatch, prefix.rstrip("; "))

    def offer_f1_threshold(
        self, class_name: str, defect_images: list[np.ndarray], *, adopt: bool = False
    ) -> tuple[float, float]:
        """F1-optimal threshold from the held-out normal scores and supplied defective samples.

        Recorded in the class's calibration; it replaces the false-reject-rate threshold only with
        ``adopt=True``. Returns ``(threshold, F1)``.
        """
        if class_name not in self._class_index:
            raise ConfigError(f"{class_name!r} is not a class of this model")
        if not defect_images:
            raise ConfigError("no defective samples supplied")
        class_model = self.class_models[self._class_index[class_name]]
        raw_parts = []
        for start in range(0, len(defect_images), self.config.batch_size):
            batch = [validate_rgb(image) for image in defect_images[start : start + self.config.batch_size]]
            features, grid = self.embed(batch)
            raw_parts.append(raw_maps(class_model.scorer, ScoreInput(features, grid, batch), self.config)[1])
        normal = np.asarray(class_model.calibration["heldout_scores"], dtype=np.float64)
        threshold, f1 = f1_optimal_threshold(normal, np.concatenate(raw_parts))
        class_model.calibration.update(
            {"f1_threshold": threshold, "f1": f1, "n_defect_samples": len(defect_images)}
        )
        if adopt:
            class_model.normaliser = Normaliser(
                class_model.normaliser.low, class_model.normaliser.median, threshold
            )
            class_model.calibration["threshold_rule"] = "F1-optimal on held-out normals + supplied defects"
        return threshold, f1
