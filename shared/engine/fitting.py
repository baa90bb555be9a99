"""Fitting: memory banks (or Gaussians), calibration on held-out normals, routing prototypes."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from shared.engine.backbones import file_sha256, get_spec, resolve_weights
from shared.engine.calibration import l2_normalise, threshold_at_frr
from shared.engine.coreset import greedy_coreset
from shared.engine.images import load_image_file, validate_rgb
from shared.engine.patch_scoring import GaussianModel, KnnBank, build_index
from shared.engine.postprocess import Normaliser

if TYPE_CHECKING:
    from shared.engine.model import ClassModel, FitConfig, FitProgress, InspectionModel

ImageSource = Path | np.ndarray


def _load(source: ImageSource) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return validate_rgb(source)
    return load_image_file(source)


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
        raise ValueError("a class needs at least 2 normal images (one to fit, one to calibrate)")
    order = np.random.default_rng(config.seed).permutation(n_images)
    n_holdout = max(config.min_holdout, round(config.holdout_fraction * n_images))
    n_holdout = min(n_holdout, n_images - 1)
    return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


def embed_sources(
    model: InspectionModel, sources: Sequence[ImageSource], batch_size: int, progress: FitProgress
) -> tuple[np.ndarray, tuple[int, int]]:
    chunks = []
    grid = (0, 0)
    for start in range(0, len(sources), batch_size):
        images = [_load(source) for source in sources[start : start + batch_size]]
        features, grid = model.embed(images)
        chunks.append(features)
        progress.advance(len(images))
    return np.concatenate(chunks), grid


def fit_model(
    model_cls: type[InspectionModel],
    data: Mapping[str, Sequence[ImageSource]],
    config: FitConfig,
    progress: FitProgress,
) -> InspectionModel:
    from shared.engine.model import ClassModel, _valid_class_name

    if not data:
        raise ValueError("no classes to fit")
    for name, sources in data.items():
        if not _valid_class_name(name):
            raise ValueError(f"invalid class name {name!r}: 1-64 letters, digits, '.', '_' or '-'")
        if len(sources) < 2:
            raise ValueError(f"class {name!r} has {len(sources)} normal images; at least 2 are needed")
    started = time.perf_counter()
    spec = get_spec(config.backbone)
    weights_path = resolve_weights(spec, config.weights)
    config = replace(config, layers=config.layers or spec.default_layers, weights=str(weights_path))
    extractor = model_cls.make_extractor(config, weights_path)
    # A shell model whose extractor embeds images; class models are filled in below.
    shell = object.__new__(model_cls)
    shell.extractor = extractor
    shell.config = config
    shell.input_size = config.input_size

    class_models: list[ClassModel] = []
    heldout: list[tuple[np.ndarray, tuple[int, int]]] = []
    for name in sorted(data):
        sources = list(data[name])
        train_idx, holdout_idx = split_holdout(len(sources), config)
        progress.stage(f"{name}: features", len(train_idx))
        features, grid = embed_sources(shell, [sources[i] for i in train_idx], config.batch_size, progress)
        prototype = l2_normalise(l2_normalise(features.mean(axis=1)).mean(axis=0))
        scorer = _fit_scorer(name, features, config, progress)
        progress.stage(f"{name}: calibration", len(holdout_idx))
        held_features, _ = embed_sources(
            shell, [sources[i] for i in holdout_idx], config.batch_size, progress
        )
        heldout.append((held_features.mean(axis=1), grid))
        placeholder = Normaliser(0.0, 0.0, 1.0)
        class_models.append(
            ClassModel(name, scorer, placeholder, 0.0, prototype, {"n_train": len(train_idx)})
        )
        shell.class_models = class_models
        _, raw = shell.raw_maps(len(class_models) - 1, held_features, grid)
        threshold = threshold_at_frr(raw, config.target_frr)
        class_models[-1].normaliser = Normaliser(float(raw.min()), float(np.median(raw)), threshold)
        class_models[-1].calibration = {
            "n_train": len(train_idx),
            "n_holdout": len(holdout_idx),
            "target_frr": config.target_frr,
            "heldout_scores": [float(score) for score in raw],
            "threshold_rule": "quantile(held-out normal scores, 1 - target_frr), Gaussian tail if few",
            "bank_includes_holdout": config.bank_from_all_normals,
        }
        if config.bank_from_all_normals:
            # The threshold above came from images the bank had not seen. The final bank also
            # covers them (more normal variety); new normal images can then only score lower.
            everything = np.concatenate([features, held_features])
            class_models[-1].scorer = _fit_scorer(name, everything, config, progress)
            del everything
        del features

    prototypes = np.stack([model.prototype for model in class_models])
    for model, (embeddings, _) in zip(class_models, heldout, strict=True):
        distances = 1.0 - l2_normalise(embeddings) @ l2_normalise(prototypes).T
        own = distances[:, class_models.index(model)]
        # Normal images of one product sit close together; defects move an image only a little,
        # another product moves it far. The floor keeps tightly clustered classes from calling
        # their own defective images unknown.
        model.unknown_threshold = float(max(own.max() * config.unknown_factor, config.unknown_min_distance))
        model.calibration["heldout_route_distance_max"] = float(own.max())

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
    return model_cls(
        config,
        extractor,
        class_models,
        version=f"lg-{created:%Y%m%dT%H%M%SZ}-{version_digest}",
        weights_sha256=file_sha256(weights_path),
        weights_path=str(weights_path.resolve()),
        metadata=metadata,
    )


def _fit_scorer(
    name: str, features: np.ndarray, config: FitConfig, progress: FitProgress
) -> KnnBank | GaussianModel:
    """A class's model of normal patches: PaDiM Gaussians, or a coreset memory bank."""
    if config.scorer == "gaussian":
        progress.stage(f"{name}: gaussian", 1)
        gaussian = GaussianModel.fit(torch.from_numpy(features), seed=config.seed)
        progress.advance(1)
        return gaussian
    patches = torch.from_numpy(features.reshape(-1, features.shape[-1]))
    target = config.bank_size
    if config.bank_ratio is not None:
        target = max(1, int(config.bank_ratio * len(patches)))
    target = min(target, len(patches))
    progress.stage(f"{name}: coreset", target)
    chosen = greedy_coreset(
        patches, target, projection_dim=config.projection_dim, seed=config.seed, progress=progress.advance
    )
    bank = patches[torch.from_numpy(np.sort(chosen))].numpy()
    index = build_index(
        bank,
        config.index,
        seed=config.seed,
        reduced_dims=config.reduced_dims,
        refine_factor=config.refine_factor,
    )
    return KnnBank(index, config.k)
