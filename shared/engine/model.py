"""The inspection model: one shared backbone, per-class patch scorers, routing and calibration.

``InspectionModel.score_batch`` is the hot path the line service calls per micro-batch: one
batched backbone forward, routing by global embeddings, one k-NN search per routed class, then
small per-frame post-processing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from shared.engine.artifacts import ArtifactError, read_manifest, write_artifact
from shared.engine.backbones import BackboneError, file_sha256, get_spec, resolve_weights
from shared.engine.calibration import RouteDecision, Router, f1_optimal_threshold
from shared.engine.features import FeatureConfig, FeatureExtractor
from shared.engine.images import validate_rgb
from shared.engine.patch_scoring import INDEX_KINDS, GaussianModel, IndexKind, KnnBank
from shared.engine.postprocess import (
    ImageScoreMode,
    Normaliser,
    anomaly_maps,
    find_regions,
    image_scores,
    resize_map,
)

UNKNOWN = "unknown"
ScorerKind = Literal["knn", "patchcore", "gaussian"]


@dataclass(frozen=True)
class Region:
    x: int
    y: int
    width: int
    height: int
    score: float
    area_fraction: float


@dataclass
class ScoreResult:
    product_class: str
    route_confidence: float
    hint_mismatch: bool
    raw_score: float
    score: float
    threshold: float
    decision: str
    reason: str
    regions: list[Region]
    anomaly_map: np.ndarray


@dataclass
class FitConfig:
    """Everything that shapes a model; stored in the manifest."""

    backbone: str = "efficientnet_lite0"
    weights: str | None = None  # weight file; None: the backbone's default local source
    input_size: int = 224
    layers: tuple[int, ...] | None = None  # None: the backbone's default
    vit_combine: Literal["mean", "concat"] = "mean"
    feature_dim: int | None = None
    arch_overrides: dict[str, Any] = field(default_factory=dict)
    scorer: ScorerKind = "knn"
    k: int = 1
    index: IndexKind = "flat"
    reduced_dims: int = 128  # pca-refine: dimensions of the candidate search
    refine_factor: int = 8  # pca-refine: candidates per neighbour re-ranked exactly
    bank_size: int = 10_000  # coreset target per class
    bank_ratio: float | None = None  # if set: coreset = ratio * patches (overrides bank_size)
    projection_dim: int = 128
    image_score: ImageScoreMode = "max"
    blur_sigma: float = 4.0
    holdout_fraction: float = 0.2
    min_holdout: int = 3
    target_frr: float = 0.01
    # Refit the bank on all normal images after calibrating on the held-out share (one more coreset):
    # on magnetic tile this took image AUROC from 0.959 to 0.968 (docs/benchmarks.md).
    bank_from_all_normals: bool = True
    unknown_factor: float = 3.0  # unknown beyond factor x the largest held-out routing distance...
    unknown_min_distance: float = 0.05  # ...but never closer than this cosine distance
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layers is not None:
            self.layers = tuple(int(layer) for layer in self.layers)
        if self.k < 1:
            raise ValueError("k must be at least 1")
        if self.index not in INDEX_KINDS:
            raise ValueError(f"unknown index {self.index!r}; choose one of {', '.join(INDEX_KINDS)}")
        if self.reduced_dims < 1 or self.refine_factor < 1:
            raise ValueError("reduced_dims and refine_factor must be at least 1")
        if self.scorer not in ("knn", "patchcore", "gaussian"):
            raise ValueError(f"unknown scorer {self.scorer!r}; choose knn, patchcore or gaussian")
        if not 0 < self.holdout_fraction < 1:
            raise ValueError("holdout_fraction must be between 0 and 1")
        if not 0 < self.target_frr < 1:
            raise ValueError("target_frr must be between 0 and 1")


@dataclass
class ClassModel:
    name: str
    scorer: KnnBank | GaussianModel
    normaliser: Normaliser
    unknown_threshold: float
    prototype: np.ndarray
    calibration: dict[str, Any]

    @property
    def threshold(self) -> float:
        return self.normaliser.threshold


class FitProgress:
    """Progress hooks for ``fit``; the CLI draws bars with them."""

    def stage(self, name: str, total: int) -> None:
        """A new stage with ``total`` units of work begins."""

    def advance(self, amount: int = 1) -> None:
        """``amount`` units of the current stage are done."""


def _valid_class_name(name: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    return 0 < len(name) <= 64 and set(name) <= allowed and name != UNKNOWN and not name.startswith(".")


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
        self.metadata = metadata
        self.router = Router(
            np.stack([model.prototype for model in class_models]),
            np.array([model.unknown_threshold for model in class_models]),
        )
        self._class_index = {name: i for i, name in enumerate(self.classes)}

    # ----- construction -------------------------------------------------------------------
    @staticmethod
    def make_extractor(config: FitConfig, weights_path: Path | None) -> FeatureExtractor:
        spec = get_spec(config.backbone)
        feature_config = FeatureConfig(
            layers=config.layers or spec.default_layers,
            input_size=config.input_size,
            vit_combine=config.vit_combine,
            feature_dim=config.feature_dim,
            arch_overrides=dict(config.arch_overrides),
        )
        return FeatureExtractor(spec, feature_config, weights_path)

    @classmethod
    def fit(
        cls,
        data: Mapping[str, Sequence[Path | np.ndarray]],
        config: FitConfig | None = None,
        progress: FitProgress | None = None,
    ) -> InspectionModel:
        """Fit one model for all classes in ``data`` (class name -> normal training images)."""
        from shared.engine.fitting import fit_model

        return fit_model(cls, data, config or FitConfig(), progress or FitProgress())

    # ----- scoring ------------------------------------------------------------------------
    def embed(self, images: list[np.ndarray]) -> tuple[np.ndarray, tuple[int, int]]:
        """``(B, N, D)`` patch features of ``images`` as float32 numpy."""
        features, grid = self.extractor(images)
        return features.numpy(), grid

    def raw_maps(
        self, class_index: int, features: np.ndarray, grid: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps (input resolution, raw scale) and raw image scores of one class's rows."""
        patch, image_raw = self.patch_scores(class_index, features)
        maps = anomaly_maps(patch, grid, self.input_size, self.config.blur_sigma)
        if image_raw is None:
            image_raw = image_scores(maps, self.config.image_score)
        return maps, image_raw

    def patch_scores(self, class_index: int, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        scorer = self.class_models[class_index].scorer
        patch = scorer.patch_scores(features)
        if self.config.scorer == "patchcore" and isinstance(scorer, KnnBank):
            return patch, scorer.patchcore_image_scores(features, patch)
        return patch, None

    def score_batch(
        self,
        images: list[np.ndarray],
        hints: list[str | None] | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[ScoreResult]:
        """Score a batch of ``HxWx3 uint8`` RGB frames; ``hints`` name the expected product."""
        if hints is None:
            hints = [None] * len(images)
        if len(hints) != len(images):
            raise ValueError(f"{len(hints)} hints for {len(images)} images")
        for image in images:
            validate_rgb(image)
        if not images:
            return []
        clock = time.perf_counter()
        features, grid = self.embed(images)
        after_backbone = time.perf_counter()

        routes = self.router.route(features.mean(axis=1))
        targets = [self._resolve_class(route, hint) for route, hint in zip(routes, hints, strict=True)]
        patch = np.empty(features.shape[:2], dtype=np.float32)
        raw_override: dict[int, float] = {}
        for class_index in sorted({target[0] for target in targets}):
            rows = [i for i, target in enumerate(targets) if target[0] == class_index]
            scores, image_raw = self.patch_scores(class_index, features[rows])
            patch[rows] = scores
            if image_raw is not None:
                raw_override.update(zip(rows, image_raw.tolist(), strict=True))
        after_knn = time.perf_counter()

        maps = anomaly_maps(patch, grid, self.input_size, self.config.blur_sigma)
        raw_scores = image_scores(maps, self.config.image_score)
        results = []
        for i, (image, (class_index, label, confidence, mismatch, reason)) in enumerate(
            zip(images, targets, strict=True)
        ):
            class_model = self.class_models[class_index]
            raw = raw_override.get(i, float(raw_scores[i]))
            score = float(class_model.normaliser(raw))
            normalised_map = class_model.normaliser(maps[i])
            height, width = image.shape[:2]
            regions = [Region(*box) for box in find_regions(normalised_map, height, width, maps[i])]
            decision = "reject" if score >= 0.5 else "pass"
            if label == UNKNOWN or (mismatch and decision == "pass"):
                decision = "review"
            results.append(
                ScoreResult(
                    product_class=label,
                    route_confidence=confidence,
                    hint_mismatch=mismatch,
                    raw_score=raw,
                    score=score,
                    threshold=class_model.threshold,
                    decision=decision,
                    reason=reason,
                    regions=regions,
                    anomaly_map=resize_map(normalised_map, height, width),
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

    def _resolve_class(self, route: RouteDecision, hint: str | None) -> tuple[int, str, float, bool, str]:
        """``(class index to score against, reported class, confidence, hint mismatch, reason)``."""
        nearest_name = self.classes[route.nearest]
        shown = hint if hint is None or len(hint) <= 64 else hint[:64] + "..."  # hints come off the wire
        if hint is not None and hint in self._class_index:
            hinted = self._class_index[hint]
            if route.unknown:
                return hinted, hint, 0.0, True, f"hint '{hint}' but the image matches no known class"
            if route.nearest != hinted:
                return hinted, hint, 0.0, True, f"hint '{hint}' but routed to '{nearest_name}'"
            return hinted, hint, route.confidence, False, ""
        mismatch = hint is not None
        prefix = f"hint '{shown}' is not a class of this model; " if mismatch else ""
        if route.unknown:
            reason = (
                f"{prefix}unknown product (nearest class '{nearest_name}' at distance {route.distance:.3f})"
            )
            return route.nearest, UNKNOWN, route.confidence, mismatch, reason
        return route.nearest, nearest_name, route.confidence, mismatch, prefix.rstrip("; ")

    def offer_f1_threshold(
        self, class_name: str, defect_images: list[np.ndarray], *, adopt: bool = False
    ) -> tuple[float, float]:
        """F1-optimal threshold from the held-out normal scores and supplied defective samples.

        Recorded in the class's calibration; it replaces the false-reject-rate threshold only with
        ``adopt=True``. Returns ``(threshold, F1)``.
        """
        if class_name not in self._class_index:
            raise ValueError(f"{class_name!r} is not a class of this model")
        if not defect_images:
            raise ValueError("no defective samples supplied")
        class_index = self._class_index[class_name]
        class_model = self.class_models[class_index]
        raw_parts = []
        for start in range(0, len(defect_images), self.config.batch_size):
            batch = [validate_rgb(image) for image in defect_images[start : start + self.config.batch_size]]
            features, grid = self.embed(batch)
            raw_parts.append(self.raw_maps(class_index, features, grid)[1])
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

    # ----- artifacts ----------------------------------------------------------------------
    def manifest_body(self) -> dict[str, Any]:
        config = asdict(self.config)
        config["layers"] = list(self.extractor.config.layers)
        return {
            "model_version": self.version,
            "backbone": {
                "name": self.backbone_name,
                "timm_name": self.extractor.spec.timm_name,
                "weights_path": self.weights_path,
                "weights_sha256": self.weights_sha256,
                "layers": list(self.extractor.config.layers),
                "input_size": self.input_size,
            },
            "config": config,
            "classes": [
                {
                    "name": model.name,
                    "threshold": model.threshold,
                    "calibration": model.calibration,
                    "normaliser": {
                        "low": model.normaliser.low,
                        "median": model.normaliser.median,
                        "threshold": model.normaliser.threshold,
                    },
                    "routing": {"unknown_threshold": model.unknown_threshold},
                    "bank_size": model.scorer.size if isinstance(model.scorer, KnnBank) else None,
                }
                for model in self.class_models
            ],
            "routing": {
                "metric": "cosine",
                "unknown_factor": self.config.unknown_factor,
                "unknown_min_distance": self.config.unknown_min_distance,
            },
            **self.metadata,
        }

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the model directory atomically (see ``shared.engine.artifacts``)."""
        from safetensors.numpy import save_file

        def write_files(folder: Path) -> None:
            tensors: dict[str, np.ndarray] = {
                "prototypes": np.stack([model.prototype for model in self.class_models]).astype(np.float32)
            }
            for i, model in enumerate(self.class_models):
                if isinstance(model.scorer, KnnBank):
                    model.scorer.write(folder / f"index_{i:03d}.faiss")
                else:
                    tensors[f"gaussian_mean_{i:03d}"] = model.scorer.mean.numpy()
                    tensors[f"gaussian_inv_cov_{i:03d}"] = model.scorer.inv_cov.numpy()
                    tensors[f"gaussian_dims_{i:03d}"] = model.scorer.dims.numpy()
            save_file(tensors, str(folder / "tensors.safetensors"))

        write_artifact(path, self.manifest_body(), write_files, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, *, weights: str | Path | None = None) -> InspectionModel:
        """Load a model directory after verifying every hash; raises ``ArtifactError``."""
        root = Path(path)
        manifest = read_manifest(root)
        try:
            config_dict = dict(manifest["config"])
            config_dict["layers"] = tuple(config_dict["layers"])
            config = FitConfig(**config_dict)
            backbone = manifest["backbone"]
            class_entries = manifest["classes"]
            spec = get_spec(config.backbone)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{root}/manifest.json is incompatible: {exc}") from None
        weights_path = _locate_weights(spec.name, backbone, weights)
        try:
            extractor = cls.make_extractor(config, weights_path)
        except BackboneError as exc:
            raise ArtifactError(f"backbone of {root} cannot be built: {exc}") from None
        from safetensors.numpy import load_file

        tensors = load_file(str(root / "tensors.safetensors"))
        class_models = []
        try:
            for i, entry in enumerate(class_entries):
                scorer: KnnBank | GaussianModel
                if config.scorer == "gaussian":
                    scorer = GaussianModel(
                        tensors[f"gaussian_mean_{i:03d}"],
                        tensors[f"gaussian_inv_cov_{i:03d}"],
                        tensors[f"gaussian_dims_{i:03d}"],
                    )
                else:
                    scorer = KnnBank.read(root / f"index_{i:03d}.faiss", config.k)
                normaliser = Normaliser(**{key: float(value) for key, value in entry["normaliser"].items()})
                class_models.append(
                    ClassModel(
                        name=str(entry["name"]),
                        scorer=scorer,
                        normaliser=normaliser,
                        unknown_threshold=float(entry["routing"]["unknown_threshold"]),
                        prototype=tensors["prototypes"][i],
                        calibration=dict(entry["calibration"]),
                    )
                )
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise ArtifactError(f"{root} is incomplete or incompatible: {exc!r}") from None
        metadata: dict[str, Any] = {
            key: manifest[key] for key in ("created_at", "training_data", "fit_seconds") if key in manifest
        }
        return cls(
            config,
            extractor,
            class_models,
            version=str(manifest["model_version"]),
            weights_sha256=backbone.get("weights_sha256"),
            weights_path=str(weights_path) if weights_path else None,
            metadata=metadata,
        )


def _locate_weights(name: str, backbone: dict[str, Any], override: str | Path | None) -> Path | None:
    """The backbone weight file whose sha256 the manifest names (random-init models have none)."""
    expected = backbone.get("weights_sha256")
    if expected is None:
        return None
    if override is not None:
        override = Path(override)
        if not override.is_file() or file_sha256(override) != expected:
            raise ArtifactError(
                f"weight file {override} is not the one the model was fitted with (sha256 {expected})"
            )
        return override
    candidates: list[Path] = []
    if backbone.get("weights_path"):
        candidates.append(Path(backbone["weights_path"]))
    with contextlib.suppress(BackboneError):  # no default source: only the recorded path counts
        candidates.append(resolve_weights(get_spec(name), None))
    for candidate in candidates:
        if candidate.is_file() and file_sha256(candidate) == expected:
            return candidate
    raise ArtifactError(
        f"the model needs the {name} weight file with sha256 {expected} "
        f"(fitted from {backbone.get('weights_path')}); put that file there or pass it as weights"
    )
