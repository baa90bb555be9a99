"""Fitting a model: per class a scorer of normal patches (and of labelled defects, for scorers that
learn from them), a threshold calibrated on normal images its scorer never saw, a routing prototype
and a routing threshold.

``fit_model`` builds finished parts only (extractor, scorers, class models) and constructs the
``InspectionModel`` once at the end; the model module never imports this one. Each normal image is
embedded once; its features wait on disk (``feature_store``) for the fold scorers and the final one.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shared.engine.backbones import file_sha256, get_spec, resolve_weights
from shared.engine.calibration import f1_optimal_threshold, out_of_fold, threshold_at_frr
from shared.engine.class_model import ClassModel, raw_maps
from shared.engine.config import FitConfig, FitProgress, RuntimeOptions, is_valid_class_name
from shared.engine.export import export_backbone
from shared.engine.feature_store import FeatureStore
from shared.engine.features import FeatureExtractor, make_extractor
from shared.engine.images import ImageSource, LazyImages, load_image_file, load_source
from shared.engine.model import InspectionModel
from shared.engine.postprocess import Normaliser
from shared.engine.routing import l2_normalise
from shared.engine.scorers.base import FitContext, LabelledSamples, PatchScorer, ScoreInput, scorer_class
from shared.errors import ConfigError, DatasetError


@dataclass(frozen=True)
class DefectSample:
    """A labelled defective image, its mask (nonzero = defect) when regions were drawn, its type."""

    image: ImageSource
    mask: ImageSource | None = None  # None: known defective, regions not drawn
    defect_type: str = "defect"


DefectInput = DefectSample | tuple[ImageSource, ImageSource | None]  # (image, mask) also accepted


def source_sha256(source: ImageSource) -> str:
    """What a training image is recorded by: the sha256 of its file's bytes, or of its pixels."""
    if isinstance(source, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(source).tobytes()).hexdigest()
    return file_sha256(Path(source))


def _source_name(source: ImageSource) -> str:
    return "" if isinstance(source, np.ndarray) else Path(source).name


def _fingerprint(
    data: Mapping[str, Sequence[ImageSource]],
    digests: Mapping[str, Sequence[str]],
    defects: Mapping[str, Sequence[DefectSample]],
    defect_digests: Mapping[str, Sequence[str]],
) -> str:
    digest = hashlib.sha256()
    for name in sorted(data):
        digest.update(name.encode() + b"\0")
        for source, sha in zip(data[name], digests[name], strict=True):
            if isinstance(source, np.ndarray):
                digest.update(str(source.shape).encode() + bytes.fromhex(sha))
            else:
                digest.update(Path(source).name.encode() + bytes.fromhex(sha))
        for sample, sha in zip(defects.get(name, ()), defect_digests.get(name, ()), strict=True):
            digest.update(b"defect\0" + sample.defect_type.encode() + b"\0" + bytes.fromhex(sha))
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
    features, _ = embed_sources(extractor, [sample.image for sample in samples], config.batch_size, progress)
    size = config.input_size
    masks = np.stack(
        [
            _mask_at(sample.mask, size) if sample.mask is not None else np.zeros((size, size), np.float32)
            for sample in samples
        ]
    )
    has_mask = np.array([sample.mask is not None for sample in samples], dtype=bool)
    return LabelledSamples(features, masks, has_mask, tuple(sample.defect_type for sample in samples))


def _as_defect(sample: DefectInput) -> DefectSample:
    if isinstance(sample, DefectSample):
        return sample
    image, mask = sample
    return DefectSample(image, mask)


def check_classes(fitted: Mapping[str, object], extra: Mapping[str, object], what: str) -> None:
    """At least one class to fit, each validly named, and ``extra`` (``what``: labelled defects,
    confirmed normals) only for classes being fitted."""
    if not fitted:
        raise DatasetError("no classes to fit")
    for name in fitted:
        if not is_valid_class_name(name):
            raise ConfigError(f"invalid class name {name!r}: 1-64 letters, digits, '.', '_' or '-'")
    foreign = sorted(set(extra) - set(fitted))
    if foreign:
        raise DatasetError(f"{what} for class(es) {', '.join(foreign)} that are not being fitted")


def _check(data: Mapping[str, Sequence[ImageSource]], defects: Mapping[str, Sequence[DefectSample]]) -> None:
    check_classes(data, defects, "defective samples")
    for name, sources in data.items():
        if len(sources) < 2:
            raise DatasetError(f"class {name!r} has {len(sources)} normal images; at least 2 are needed")


class _FoldProgress(FitProgress):
    """Progress of one fold's scorer: its stages named with the fold."""

    def __init__(self, inner: FitProgress, fold: str) -> None:
        self.inner = inner
        self.fold = fold

    def stage(self, name: str, total: int) -> None:
        self.inner.stage(f"{name} ({self.fold})", total)

    def advance(self, amount: int = 1) -> None:
        self.inner.advance(amount)


def _prototype(embeddings: np.ndarray) -> np.ndarray:
    """A class's routing prototype: the mean of its images' normalised global embeddings."""
    return l2_normalise(l2_normalise(embeddings).mean(axis=0))


def _embed_into(
    store: FeatureStore,
    extractor: FeatureExtractor,
    sources: Sequence[ImageSource],
    batch_size: int,
    progress: FitProgress,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Embed ``sources`` once into ``store``; returns their global embeddings ``(n, D)`` and the grid.
    Only one batch of features is in memory at a time."""
    embeddings: list[np.ndarray] = []
    grid = (0, 0)
    for start in range(0, len(sources), batch_size):
        images = [load_source(source) for source in sources[start : start + batch_size]]
        features, grid = extractor(images)
        batch = features.numpy()
        store.write(start, batch)
        embeddings.append(batch.mean(axis=1))
        progress.advance(len(images))
    return np.concatenate(embeddings), grid


def _score_rows(
    scorer: PatchScorer,
    features: np.ndarray,
    grid: tuple[int, int],
    sources: Sequence[ImageSource],
    config: FitConfig,
    progress: FitProgress,
) -> np.ndarray:
    """Raw image scores of stored feature rows, ``config.batch_size`` at a time."""
    scores = np.empty(len(features), dtype=np.float64)
    for start in range(0, len(features), config.batch_size):
        stop = start + config.batch_size
        batch = ScoreInput(np.ascontiguousarray(features[start:stop]), grid, LazyImages(sources[start:stop]))
        scores[start:stop] = raw_maps(scorer, batch, config)[1]
        progress.advance(len(batch.features))
    return scores


def _calibration_split(n_images: int, config: FitConfig) -> tuple[list[np.ndarray], bool]:
    """The parts of a class's normal images and whether they are cross-fitted: K out-of-fold parts,
    or (``calibration_folds == 1``) the held-out share and the rest, of which only the first is held out."""
    if config.calibration_folds >= 2:
        return out_of_fold(n_images, config.calibration_folds, config.seed), True
    train_idx, holdout_idx = split_holdout(n_images, config)
    return [holdout_idx, train_idx], False


def _pools_fold_scores(
    scorer_type: type[PatchScorer], config: FitConfig, labelled: LabelledSamples | None
) -> bool:
    """Whether a scorer that is not refitted on all normal images scores on one scale across fits,
    so that its fold scorers' out-of-fold scores can set one threshold together."""
    pools = getattr(scorer_type, "pools_fold_scores", None)
    return bool(pools(config, labelled is not None)) if pools is not None else False


def _fit_class(
    name: str,
    sources: Sequence[ImageSource],
    defect_samples: Sequence[DefectSample],
    labelled: LabelledSamples | None,
    extractor: FeatureExtractor,
    scorer_type: type[PatchScorer],
    config: FitConfig,
    progress: FitProgress,
    workdir: Path,
) -> ClassModel:
    """One class: features stored once, a threshold from scores of images their scorer never saw,
    the final scorer, routing prototype and distance."""
    # A trained network's scores are on a scale of its own: one trained again on more images would
    # not match a threshold set on the fold networks' scores. Learned scorers therefore serve a
    # network they calibrated: on a single held-out share, or, where their scores share one scale
    # across fits (``pools_fold_scores``), on the pooled out-of-fold scores of all K fold networks,
    # the first of which serves.
    refits = getattr(scorer_type, "refit_on_all_normals", True)
    pools = not refits and config.calibration_folds >= 2 and _pools_fold_scores(scorer_type, config, labelled)
    parts, cross_fitted = _calibration_split(
        len(sources), config if refits or pools else replace(config, calibration_folds=1)
    )
    store = FeatureStore(workdir / f"{name}.features", parts, cyclic=cross_fitted)
    try:
        progress.stage(f"{name}: features", len(sources))
        embeddings, grid = _embed_into(store, extractor, sources, config.batch_size, progress)
        held_folds = range(len(parts)) if cross_fitted else range(1)
        scores = np.full(len(sources), np.nan)
        route_distances = np.full(len(sources), np.nan)
        scorer: PatchScorer | None = None
        served: PatchScorer | None = None
        served_idx = np.arange(0)
        for k in held_folds:
            fold = f"fold {k + 1}/{len(held_folds)}"
            train_features, train_idx = store.rest(k)
            context = FitContext(
                name,
                train_features,
                grid,
                config,
                _FoldProgress(progress, fold) if cross_fitted else progress,
                LazyImages([sources[i] for i in train_idx]),
                labelled,
            )
            scorer = scorer_type.fit(context)
            if k == 0:
                served, served_idx = scorer, train_idx
            held_features, held_idx = store.part(k)
            progress.stage(
                f"{name}: calibration ({fold})" if cross_fitted else f"{name}: calibration", len(held_idx)
            )
            scores[held_idx] = _score_rows(
                scorer, held_features, grid, [sources[i] for i in held_idx], config, progress
            )
            fold_prototype = _prototype(embeddings[train_idx])
            route_distances[held_idx] = 1.0 - l2_normalise(embeddings[held_idx]) @ fold_prototype
            del context, train_features, held_features
            store.release()
        held = np.flatnonzero(~np.isnan(scores))
        raw = scores[held]
        threshold = threshold_at_frr(raw, config.target_frr)
        final_on_all = refits and (cross_fitted or config.bank_from_all_normals)
        if final_on_all:
            # The threshold came from images their scorer had not seen. The final scorer covers all
            # of them (more normal variety); new normal images can then only score a little lower.
            del scorer
            all_features, all_idx = store.everything()
            context = FitContext(
                name,
                all_features,
                grid,
                config,
                progress,
                LazyImages([sources[i] for i in all_idx]),
                labelled,
            )
            scorer = scorer_type.fit(context)
            del context, all_features
            prototype = _prototype(embeddings)
            n_train = len(sources)
        else:
            # The first fold's scorer serves: trained on every normal image outside ``parts[0]``.
            scorer = served
            prototype = _prototype(embeddings[served_idx])
            n_train = len(served_idx)
        assert scorer is not None
    finally:
        store.close()
    route_max = float(route_distances[held].max())
    calibration: dict[str, Any] = {
        "n_train": n_train,
        "n_holdout": len(held),
        "folds": len(parts) if cross_fitted else 1,
        "target_frr": config.target_frr,
        "heldout_scores": [float(score) for score in raw],
        "threshold_rule": (
            f"quantile(out-of-fold scores of all normal images, {len(parts)} folds, 1 - target_frr), "
            "Gaussian tail if few"
            if cross_fitted
            else "quantile(held-out normal scores, 1 - target_frr), Gaussian tail if few"
        ),
        "bank_includes_holdout": final_on_all,
        **({"served_fold": 1} if pools else {}),
        # Normal images of one product sit close together; defects move an image only a little,
        # another product moves it far. The floor keeps tightly clustered classes from calling
        # their own defective images unknown.
        "heldout_route_distance_max": route_max,
    }
    if labelled is not None:
        calibration["labelled_defects"] = _labelled_record(labelled, scorer_type)
        if not calibration["labelled_defects"]["learned_from"]:
            # This scorer cannot learn from defects: they only offer an F1-optimal threshold,
            # recorded beside the false-reject one and not adopted (``lineguard fit`` says so).
            defect_raw = _score_rows(
                scorer, labelled.features, grid, [sample.image for sample in defect_samples], config, progress
            )
            f1_threshold, f1 = f1_optimal_threshold(raw, defect_raw)
            calibration.update({"f1_threshold": f1_threshold, "f1": f1, "n_defect_samples": len(defect_raw)})
    normaliser = Normaliser(float(raw.min()), float(np.median(raw)), threshold)
    unknown = float(max(route_max * config.unknown_factor, config.unknown_min_distance))
    return ClassModel(name, scorer, normaliser, unknown, prototype, calibration)


def _labelled_record(labelled: LabelledSamples, scorer_type: type[PatchScorer]) -> dict[str, Any]:
    types = labelled.defect_types or ("defect",) * len(labelled.features)
    by_type: dict[str, int] = {}
    for kind in types:
        by_type[kind] = by_type.get(kind, 0) + 1
    with_mask = int(labelled.has_mask.sum()) if labelled.has_mask is not None else len(labelled.features)
    return {
        "n": len(labelled.features),
        "by_type": dict(sorted(by_type.items())),
        "with_mask": with_mask,
        "learned_from": bool(getattr(scorer_type, "learns_from_defects", False)),
    }


def fit_model(
    data: Mapping[str, Sequence[ImageSource]],
    config: FitConfig | None = None,
    progress: FitProgress | None = None,
    *,
    defects: Mapping[str, Sequence[DefectInput]] | None = None,
    options: RuntimeOptions | None = None,
    export: bool = False,
) -> InspectionModel:
    """Fit one model for all classes in ``data`` (class name -> normal training images).

    ``defects`` (class name -> labelled defective images, with masks where drawn) are handed to the
    scorers, as ``FitContext.defects``; a scorer that learns from them says so
    (``learns_from_defects = True``), for any other they only offer an F1-optimal threshold, recorded
    and not adopted. The thresholds always come from normal images only: by default out-of-fold
    scores over all of them (``FitConfig.calibration_folds``, ``shared.engine.calibration``).
    Features are kept on disk in a temporary folder while a class is fitted (``feature_store``).
    ``export``: give the model its backbone's ONNX export (parity-checked, saved with it), which
    OpenVINO and ONNX Runtime run; also made when ``options`` choose one of them for fitting.
    ``options``: where and how the backbone runs while fitting (default: torch, CPU, fp32).
    """
    config = config or FitConfig()
    progress = progress or FitProgress()
    labelled_input = {
        name: [_as_defect(sample) for sample in samples] for name, samples in (defects or {}).items()
    }
    _check(data, labelled_input)
    if config.calibration_folds > 1 and not config.bank_from_all_normals:
        raise ConfigError(
            "a bank from the training share only (bank_from_all_normals False) needs a single held-out "
            "share: calibration_folds 1"
        )
    started = time.perf_counter()
    spec = get_spec(config.backbone)
    weights_path = resolve_weights(spec, config.weights)
    config = replace(config, layers=config.layers or spec.default_layers, weights=str(weights_path))
    options = options or RuntimeOptions()
    extractor = make_extractor(config, weights_path, options=replace(options, runtime="torch"))
    if export or options.runtime in ("openvino", "onnx"):
        extractor.export = export_backbone(extractor)
        extractor.use_runtime(options)
    scorer_type = scorer_class(config.scorer)

    class_models: list[ClassModel] = []
    with tempfile.TemporaryDirectory(prefix="lineguard-fit-") as workdir:
        for name in sorted(data):
            labelled = None
            if labelled_input.get(name):
                progress.stage(f"{name}: labelled defects", len(labelled_input[name]))
                labelled = _labelled(labelled_input[name], extractor, config, progress)
            class_models.append(
                _fit_class(
                    name,
                    list(data[name]),
                    labelled_input.get(name, []),
                    labelled,
                    extractor,
                    scorer_type,
                    config,
                    progress,
                    Path(workdir),
                )
            )
    return assemble_model(config, extractor, class_models, data, started, weights_path, labelled_input)


def set_unknown_thresholds(
    class_models: list[ClassModel], route_embeddings: list[np.ndarray], config: FitConfig
) -> None:
    """Each class's routing threshold from its held-out images' distances to its prototype (the
    few-shot fit: there is no out-of-fold routing distance there)."""
    for model, embeddings in zip(class_models, route_embeddings, strict=True):
        own = 1.0 - l2_normalise(embeddings) @ l2_normalise(model.prototype[None])[0]
        model.unknown_threshold = float(max(own.max() * config.unknown_factor, config.unknown_min_distance))
        model.calibration["heldout_route_distance_max"] = float(own.max())


def assemble_model(
    config: FitConfig,
    extractor: FeatureExtractor,
    class_models: list[ClassModel],
    data: Mapping[str, Sequence[ImageSource]],
    started: float,
    weights_path: Path,
    labelled_input: Mapping[str, Sequence[DefectSample]] | None = None,
) -> InspectionModel:
    """The finished model: version, training-data fingerprint and fit time around the classes."""
    labelled_input = labelled_input or {}
    created = datetime.now(UTC)
    # Every image the model learned from, by sha256: ``lineguard evaluate`` leaves them out.
    digests = {name: [source_sha256(source) for source in data[name]] for name in sorted(data)}
    defect_digests = {
        name: [source_sha256(sample.image) for sample in samples] for name, samples in labelled_input.items()
    }
    fingerprint = _fingerprint(data, digests, labelled_input, defect_digests)
    fit_seconds = time.perf_counter() - started
    version_digest = hashlib.sha256(f"{fingerprint}{config}{created.isoformat()}".encode()).hexdigest()[:10]
    metadata: dict[str, Any] = {
        "created_at": created.isoformat(timespec="seconds"),
        "training_data": {
            "fingerprint": fingerprint,
            "images": {name: len(sources) for name, sources in data.items()},
            "sha256": digests,
            "labelled_defects": {
                name: [
                    {
                        "name": _source_name(sample.image),
                        "defect_type": sample.defect_type,
                        "mask": sample.mask is not None,
                        "sha256": sha,
                    }
                    for sample, sha in zip(labelled_input[name], defect_digests[name], strict=True)
                ]
                for name in sorted(labelled_input)
                if labelled_input[name]
            },
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
