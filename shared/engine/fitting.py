"""Fitting a model: per class a scorer of normal patches, a threshold calibrated on held-out normal
images, and a routing prototype; then the routing thresholds of all classes.

``fit_model`` builds finished parts only (extractor, scorers, class models) and constructs the
``InspectionModel`` once at the end; the model module never imports this one.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shared.engine.backbones import file_sha256, get_spec, resolve_weights
from shared.engine.calibration import threshold_at_frr
from shared.engine.class_model import ClassModel, raw_maps
from shared.engine.config import FitConfig, FitProgress, is_valid_class_name
from shared.engine.features import FeatureExtractor, make_extractor
from shared.engine.images import ImageSource, LazyImages, load_image_file, load_source
from shared.engine.model import InspectionModel
from shared.engine.postprocess import Normaliser
from shared.engine.routing import l2_normalise
from shared.engine.scorers.base import FitContext, LabelledSamples, ScoreInput, scorer_class
from shared.errors import ConfigError, DatasetError

DefectSample = tuple[ImageSource, ImageSource]  # a defective image and its mask (nonzero = defect)


def _fingerprint(data: Mapping[str, Sequence[ImageSource]]) -> str:
    digest = hashlib.sha256()
    for name in sorted(data):
        digest.update(name.encode() + b"\0")
        for source in data[name]:
            if isinstance(source, np.ndarray):
                digest.update(str(source.shape).encode() + hashlib.sha256(source.tobytes()).digest())
            else:
                digest.update(Path(source).name.encode() + bytes.fromhex(file_sha256(Path(source))))
    return digest.hexdigest()


def split_holdout(n_images: int, config: FitConfig) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and the held-out calibration images (seeded, reproducible)."""
    if n_images < 2:
        raise DatasetError("a class needs at least 2 normal images (one to fit, one to calibrate)")
    order = np.random.default_rng(config.seed).permutation(n_images)
    n_holdout = max(config.min_holdout, round(config.holdout_fraction * n_images))
    n_holdout = min(n_holdout, n_images - 1)
    return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


def embed_sources(
    extractor: FeatureExtractor, sources: Sequence[ImageSource], batch_size: int, progress: FitProgress
) -> tuple[np.ndarray, tuple[int, int]]:
    """``(n, N, D)`` float32 patch features of ``sources``, embedded ``batch_size`` at a time."""
    chunks = []
    grid = (0, 0)
    for start in range(0, len(sources), batch_size):
        images = [load_source(source) for source in sources[start : start + batch_size]]
        features, grid = extractor(images)
        chunks.append(features.numpy())
        progress.advance(len(images))
    return np.concatenate(chunks), grid


def _mask_at(source: ImageSource, size: int) -> np.ndarray:
    """A ground-truth mask (nonzero = defect) as ``size`` x ``size`` float32 0/1, resized nearest."""
    pixels = source if isinstance(source, np.ndarray) else load_image_file(source)
    gray = pixels if pixels.ndim == 2 else pixels.max(axis=2)
    binary = Image.fromarray(np.where(gray > 0, 255, 0).astype(np.uint8))
    return (np.asarray(binary.resize((size, size), Image.Resampling.NEAREST)) > 0).astype(np.float32)


def _labelled(
    samples: Sequence[DefectSample], extractor: FeatureExtractor, config: FitConfig, progress: FitProgress
) -> LabelledSamples:
    features, _ = embed_sources(extractor, [image for image, _ in samples], config.batch_size, progress)
    masks = np.stack([_mask_at(mask, config.input_size) for _, mask in samples])
    return LabelledSamples(features, masks)


def _check(data: Mapping[str, Sequence[ImageSource]], defects: Mapping[str, Sequence[DefectSample]]) -> None:
    if not data:
        raise DatasetError("no classes to fit")
    for name, sources in data.items():
        if not is_valid_class_name(name):
            raise ConfigError(f"invalid class name {name!r}: 1-64 letters, digits, '.', '_' or '-'")
        if len(sources) < 2:
            raise DatasetError(f"class {name!r} has {len(sources)} normal images; at least 2 are needed")
    foreign = sorted(set(defects) - set(data))
    if foreign:
        raise DatasetError(f"defective samples for class(es) {', '.join(foreign)} that are not being fitted")


def fit_model(
    data: Mapping[str, Sequence[ImageSource]],
    config: FitConfig | None = None,
    progress: FitProgress | None = None,
    *,
    defects: Mapping[str, Sequence[DefectSample]] | None = None,
) -> InspectionModel:
    """Fit one model for all classes in ``data`` (class name -> normal training images).

    ``defects`` (class name -> defective images with masks) are handed to the scorers that learn
    from labelled defects; the thresholds still come from held-out normal images only.
    """
    config = config or FitConfig()
    progress = progress or FitProgress()
    defects = defects or {}
    _check(data, defects)
    started = time.perf_counter()
    spec = get_spec(config.backbone)
    weights_path = resolve_weights(spec, config.weights)
    config = replace(config, layers=config.layers or spec.default_layers, weights=str(weights_path))
    extractor = make_extractor(config, weights_path)
    scorer_type = scorer_class(config.scorer)

    class_models: list[ClassModel] = []
    heldout_embeddings: list[np.ndarray] = []
    for name in sorted(data):
        sources = list(data[name])
        train_idx, holdout_idx = split_holdout(len(sources), config)
        train_sources = [sources[i] for i in train_idx]
        holdout_sources = [sources[i] for i in holdout_idx]
        progress.stage(f"{name}: features", len(train_idx))
        features, grid = embed_sources(extractor, train_sources, config.batch_size, progress)
        prototype = l2_normalise(l2_normalise(features.mean(axis=1)).mean(axis=0))
        labelled = None
        if defects.get(name):
            progress.stage(f"{name}: defective samples", len(defects[name]))
            labelled = _labelled(defects[name], extractor, config, progress)
        context = FitContext(name, features, grid, config, progress, LazyImages(train_sources), labelled)
        scorer = scorer_type.fit(context)
        progress.stage(f"{name}: calibration", len(holdout_idx))
        held_features, _ = embed_sources(extractor, holdout_sources, config.batch_size, progress)
        heldout_embeddings.append(held_features.mean(axis=1))
        _, raw = raw_maps(scorer, ScoreInput(held_features, grid, LazyImages(holdout_sources)), config)
        threshold = threshold_at_frr(raw, config.target_frr)
        calibration = {
            "n_train": len(train_idx),
            "n_holdout": len(holdout_idx),
            "target_frr": config.target_frr,
            "heldout_scores": [float(score) for score in raw],
            "threshold_rule": "quantile(held-out normal scores, 1 - target_frr), Gaussian tail if few",
            "bank_includes_holdout": config.bank_from_all_normals,
        }
        if config.bank_from_all_normals:
            # The threshold above came from images the scorer had not seen. The final scorer also
            # covers them (more normal variety); new normal images can then only score lower.
            everything = replace(
                context,
                features=np.concatenate([features, held_features]),
                images=LazyImages(train_sources + holdout_sources),
            )
            scorer = scorer_type.fit(everything)
            del everything
        del features, context
        normaliser = Normaliser(float(raw.min()), float(np.median(raw)), threshold)
        class_models.append(ClassModel(name, scorer, normaliser, 0.0, prototype, calibration))

    set_unknown_thresholds(class_models, heldout_embeddings, config)
    return assemble_model(config, extractor, class_models, data, started, weights_path)


def set_unknown_thresholds(
    class_models: list[ClassModel], heldout_embeddings: list[np.ndarray], config: FitConfig
) -> None:
    """Each class's routing threshold from its held-out images' distances to all prototypes."""
    prototypes = np.stack([model.prototype for model in class_models])
    for index, (model, embeddings) in enumerate(zip(class_models, heldout_embeddings, strict=True)):
        distances = 1.0 - l2_normalise(embeddings) @ l2_normalise(prototypes).T
        own = distances[:, index]
        # Normal images of one product sit close together; defects move an image only a little,
        # another product moves it far. The floor keeps tightly clustered classes from calling
        # their own defective images unknown.
        model.unknown_threshold = float(max(own.max() * config.unknown_factor, config.unknown_min_distance))
        model.calibration["heldout_route_distance_max"] = float(own.max())


def assemble_model(
    config: FitConfig,
    extractor: FeatureExtractor,
    class_models: list[ClassModel],
    data: Mapping[str, Sequence[ImageSource]],
    started: float,
    weights_path: Path,
) -> InspectionModel:
    """The finished model: version, training-data fingerprint and fit time around the classes."""
    created = datetime.now(UTC)
    fingerprint = _fingerprint(data)
    fit_seconds = time.perf_counter() - started
    version_digest = hashlib.sha256(f"{fingerprint}{config}{created.isoformat()}".encode()).hexdigest()[:10]
    metadata: dict[str, Any] = {
        "created_at": created.isoformat(timespec="seconds"),
        "training_data": {
            "fingerprint": fingerprint,
            "images": {name: len(sources) for name, sources in data.items()},
        },
        "fit_seconds": round(fit_seconds, 3),
    }
    return InspectionModel(
        config,
        extractor,
        class_models,
        version=f"lg-{created:%Y%m%dT%H%M%SZ}-{version_digest}",
        weights_sha256=file_sha256(weights_path),
        weights_path=str(weights_path.resolve()),
        metadata=metadata,
    )
