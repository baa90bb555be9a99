"""Few-shot fitting: a model for a new product from 1-16 normal images (``lineguard fit --shots K``).

Memory: every shot becomes several views (``shot_views``: mirror images and exposure changes, as
``FitConfig.shot_*`` says), so that the bank holds variation a handful of photographs from one
session do not show. The bank takes as many views of each shot as fit in ``shot_bank_patches``
(the originals first, then mirror images, then the mildest exposures) and keeps every patch of
them, searched exactly: no coreset (over 16 shots x 20 views, 250k patches, the coreset ran for
more than ten minutes). Only when the shots alone overflow the budget is the bank a coreset of
``bank_size``. The budget was chosen on training
images only (``benchmarks.fewshot select``; docs/benchmarks.md, "Few-shot").

Threshold: with no held-out normal image the threshold is estimated, and marked approximate:

- two shots or more: leave-one-out. Each shot is scored by a scorer that has not seen it: for the
  memory-bank scorers an exact search among the other shots' view patches (the bank before its
  coreset), for scorers that can drop references (WinCLIP+) their memory without the shot, for
  any other scorer one refitted on the other shots;
- one shot: leave-one-view-out over its views, which only measures how the views differ from each
  other, not how parts differ: the least trustworthy threshold of all.

The scores then go through ``threshold_at_frr`` (a Gaussian tail from five scores up). Nothing here
knows the false-reject rate this threshold will give; ``lineguard evaluate`` measures it.

Confirmed normals (normal images an operator confirmed as good, e.g. exported from the console's
feedback by ``lineguard labels export``) are real held-out images: when given, the threshold comes
from their scores instead, and they then join the bank.

Review gate: each class's calibration carries ``cold_start`` = ``{shots, confirmed_normals,
review_until_confirmed}``, and every verdict of the class is ``review`` while confirmed_normals <
review_until_confirmed (``ClassModel.awaiting_confirmation``). The counts live in the signed and
hashed manifest, so they grow only by a refit with more confirmed normals, which clears the gate
once enough are in.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from PIL import Image

from shared.engine.backbones import get_spec, resolve_weights
from shared.engine.calibration import threshold_at_frr
from shared.engine.class_model import ClassModel, maps_and_scores, raw_maps
from shared.engine.config import FitConfig, FitProgress
from shared.engine.features import FeatureExtractor, make_extractor
from shared.engine.fitting import assemble_model, check_classes, embed_sources, set_unknown_thresholds
from shared.engine.images import ImageSource, LazyImages, load_source
from shared.engine.model import InspectionModel
from shared.engine.postprocess import Normaliser
from shared.engine.routing import l2_normalise
from shared.engine.scorers.base import FitContext, PatchScorer, PatchScores, ScoreInput, scorer_class
from shared.engine.scorers.index import KnnBank, build_index
from shared.engine.scorers.knn import KnnScorer
from shared.errors import ConfigError, DatasetError

MAX_SHOTS = 16


def select_shots(sources: Sequence[ImageSource], shots: int, seed: int | None = None) -> list[ImageSource]:
    """``shots`` images: the first ones in the given (sorted-by-name) order, or a seeded choice."""
    if not 1 <= shots <= MAX_SHOTS:
        raise ConfigError(f"--shots must be 1 to {MAX_SHOTS}, got {shots}")
    if len(sources) < shots:
        raise DatasetError(f"{shots} shots asked for, but only {len(sources)} normal images were found")
    if seed is None:
        return list(sources[:shots])
    chosen = np.sort(np.random.default_rng(seed).choice(len(sources), shots, replace=False))
    return [sources[i] for i in chosen]


def exposure_gains(config: FitConfig) -> list[float]:
    """The exposure factors of the views: ``shot_gain_steps`` values spaced evenly in log between
    1 / ``shot_gain_max`` and ``shot_gain_max`` (always including 1)."""
    steps = config.shot_gain_steps
    if steps <= 1 or config.shot_gain_max <= 1.0:
        return [1.0]
    gains = np.exp(np.linspace(-np.log(config.shot_gain_max), np.log(config.shot_gain_max), steps))
    if steps % 2 == 0:  # an even count has no middle value: add the original exposure
        gains = np.sort(np.r_[gains, 1.0])
    return [float(g) for g in gains]


def shot_views(image: np.ndarray, config: FitConfig) -> list[np.ndarray]:
    """The views of one shot, the original first: mirror images x exposure gains.

    A mirror image of a normal part is assumed to be normal too (``shot_flips``: none, horizontal,
    or both axes); an exposure gain multiplies the pixel values (clipped at 255), as a brighter or
    darker lamp or a longer or shorter exposure would.
    """
    mirrored = [image]
    if config.shot_flips in ("horizontal", "both"):
        mirrored.append(image[:, ::-1])
    if config.shot_flips == "both":
        mirrored.extend([image[::-1], image[::-1, ::-1]])
    views = []
    for gain in sorted(exposure_gains(config), key=lambda g: abs(np.log(g))):  # 1.0 first
        for base in mirrored:
            if gain == 1.0:
                views.append(np.ascontiguousarray(base))
            else:
                scaled = np.clip(base.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)
                views.append(np.ascontiguousarray(scaled))
    return views


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    """Views are kept at model resolution: the extractor would resize them anyway."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def fit_few_shot(
    data: Mapping[str, Sequence[ImageSource]],
    config: FitConfig | None = None,
    progress: FitProgress | None = None,
    *,
    confirmed: Mapping[str, Sequence[ImageSource]] | None = None,
) -> InspectionModel:
    """A cold-start model: per class the given shots (1-16 normal images) and, optionally, confirmed
    normal images held out for the threshold."""
    config = config or FitConfig()
    progress = progress or FitProgress()
    confirmed = confirmed or {}
    _check(data, confirmed)
    started = time.perf_counter()
    spec = get_spec(config.backbone)
    weights_path = resolve_weights(spec, config.weights)
    layers = config.layers or spec.few_shot_layers or spec.default_layers
    config = replace(config, layers=layers, weights=str(weights_path))
    extractor = make_extractor(config, weights_path)
    scorer_type = scorer_class(config.scorer)
    class_models: list[ClassModel] = []
    route_embeddings: list[np.ndarray] = []
    for name in sorted(data):
        model, embeddings = _fit_class(
            name, list(data[name]), list(confirmed.get(name, ())), config, extractor, scorer_type, progress
        )
        class_models.append(model)
        route_embeddings.append(embeddings)
    set_unknown_thresholds(class_models, route_embeddings, config)
    every = {name: [*data[name], *confirmed.get(name, ())] for name in data}
    return assemble_model(config, extractor, class_models, every, started, weights_path)


def _check(data: Mapping[str, Sequence[ImageSource]], confirmed: Mapping[str, Sequence[ImageSource]]) -> None:
    check_classes(data, confirmed, "confirmed normals")
    for name, shots in data.items():
        if not 1 <= len(shots) <= MAX_SHOTS:
            raise DatasetError(
                f"class {name!r} has {len(shots)} shots; a few-shot model takes 1 to {MAX_SHOTS}"
            )


def _fit_class(
    name: str,
    shots: list[ImageSource],
    confirmed: list[ImageSource],
    config: FitConfig,
    extractor: FeatureExtractor,
    scorer_type: type[PatchScorer],
    progress: FitProgress,
) -> tuple[ClassModel, np.ndarray]:
    features, grid, views, per_shot = _embedded_views(name, shots, config, extractor, progress)
    owner = np.repeat(np.arange(len(shots)), per_shot)
    context = FitContext(name, features, grid, _bank_config(config, features), progress, views)
    scorer = scorer_type.fit(context)
    originals = np.arange(0, len(views), per_shot)  # each shot's first view
    calibration: dict[str, Any] = {
        "n_train": len(shots),
        "n_views": len(views),
        "target_frr": config.target_frr,
        "cold_start": {
            "shots": len(shots),
            "confirmed_normals": len(confirmed),
            "review_until_confirmed": config.review_until_confirmed,
        },
    }
    bank_features = features  # what the final scorer's bank was built from
    if confirmed:
        progress.stage(f"{name}: calibration on {len(confirmed)} confirmed normals", len(confirmed))
        held, _ = embed_sources(extractor, confirmed, config.batch_size, progress)
        _, raw = raw_maps(scorer, ScoreInput(held, grid, LazyImages(confirmed)), config)
        calibration.update(
            n_holdout=len(confirmed),
            threshold_rule="quantile(confirmed normal scores, 1 - target_frr), Gaussian tail if few",
            threshold_approximate=len(confirmed) < config.review_until_confirmed,
            bank_includes_holdout=True,
        )
        # The threshold came from images the scorer had not seen; the final scorer also covers them.
        bank_features = np.concatenate([features, held])
        everything = FitContext(
            name,
            bank_features,
            grid,
            _bank_config(config, bank_features),
            progress,
            [*views, *LazyImages(confirmed)],
        )
        scorer = scorer_type.fit(everything)
        route = np.concatenate([features[originals], held]).mean(axis=1)
    else:
        progress.stage(f"{name}: leave-one-out calibration", len(shots))
        raw = _leave_one_out(scorer, scorer_type, context, owner, originals, progress)
        rule = (
            "leave-one-out over the shots (each scored without its own views), Gaussian tail"
            if len(shots) > 1
            else "leave-one-view-out over the views of the only shot"
        )
        calibration.update(
            n_holdout=0,
            threshold_rule=f"{rule}; approximate: the false-reject rate is unknown until measured",
            threshold_approximate=True,
            bank_includes_holdout=True,
        )
        route = features.mean(axis=1)
    calibration["bank"] = _bank_facts(config, bank_features, per_shot)
    threshold = threshold_at_frr(raw, config.target_frr)
    calibration["heldout_scores"] = [float(score) for score in raw]
    prototype = l2_normalise(l2_normalise(features.mean(axis=1)).mean(axis=0))
    normaliser = Normaliser(float(raw.min()), float(np.median(raw)), threshold)
    return ClassModel(name, scorer, normaliser, 0.0, prototype, calibration), route


def views_per_shot(shots: int, patches_per_view: int, views_of_a_shot: int, budget: int) -> int:
    """How many views of each shot the bank takes: as many as fit in ``budget`` patches (0: every
    view), and never fewer than one, the shot itself."""
    if budget <= 0:
        return views_of_a_shot
    return max(1, min(views_of_a_shot, budget // (shots * patches_per_view)))


def _embedded_views(
    name: str, shots: list[ImageSource], config: FitConfig, extractor: FeatureExtractor, progress: FitProgress
) -> tuple[np.ndarray, tuple[int, int], list[np.ndarray], int]:
    """Patch features of the views the bank takes, shot by shot (each shot's original first), their
    grid, the views, and how many views of each shot were taken.

    The originals are embedded first: their patch count says how many views fit the budget, and
    only those are embedded (16 shots x 20 views would be 250k patches and a slow coreset)."""
    every_view = [
        [_resized(view, config.input_size) for view in shot_views(load_source(s), config)] for s in shots
    ]
    progress.stage(f"{name}: features of {len(shots)} shots", len(shots))
    first, grid = embed_sources(extractor, [group[0] for group in every_view], config.batch_size, progress)
    per_shot = views_per_shot(len(shots), first.shape[1], len(every_view[0]), config.shot_bank_patches)
    views = [view for group in every_view for view in group[:per_shot]]
    if per_shot == 1:
        return first, grid, views, 1
    more = [view for group in every_view for view in group[1:per_shot]]
    progress.stage(f"{name}: features of {per_shot - 1} more views of each shot", len(more))
    rest, _ = embed_sources(extractor, more, config.batch_size, progress)
    rest = rest.reshape(len(shots), per_shot - 1, *first.shape[1:])
    features = np.concatenate([first[:, None], rest], axis=1).reshape(-1, *first.shape[1:])
    return features, grid, views, per_shot


def _bank_config(config: FitConfig, features: np.ndarray) -> FitConfig:
    """Within the budget the bank keeps every patch (a coreset target of all of them is no coreset);
    over it, the coreset of ``bank_size`` as in a plain fit."""
    patches = features.shape[0] * features.shape[1]
    if 0 < patches <= config.shot_bank_patches:
        return replace(config, bank_size=patches, bank_ratio=None)
    return config


def _bank_facts(config: FitConfig, features: np.ndarray, per_shot: int) -> dict[str, Any]:
    patches = features.shape[0] * features.shape[1]
    bank = _bank_config(config, features)
    target = bank.bank_size if bank.bank_ratio is None else max(1, int(bank.bank_ratio * patches))
    kept = "all" if target >= patches else "coreset"
    return {"views_per_shot": per_shot, "patches": patches, "kept": kept}


def _leave_one_out(
    scorer: PatchScorer,
    scorer_type: type[PatchScorer],
    context: FitContext,
    owner: np.ndarray,
    originals: np.ndarray,
    progress: FitProgress,
) -> np.ndarray:
    """Raw image scores of each shot's original view by a scorer that did not see that shot (one
    shot: of each view by one that did not see that view)."""
    config = context.config
    groups = owner if len(originals) > 1 else np.arange(len(owner))
    held_rows = originals if len(originals) > 1 else np.arange(len(owner))
    scores = []
    for row in (int(r) for r in held_rows):
        others = np.flatnonzero(groups != groups[row])
        query = ScoreInput(context.features[row : row + 1], context.grid, [context.images[row]])
        patch = _score_without(scorer, scorer_type, context, others, query)
        scores.append(maps_and_scores(patch, config)[1][0])
        progress.advance(1)
    return np.asarray(scores, dtype=np.float64)


def _score_without(
    scorer: PatchScorer,
    scorer_type: type[PatchScorer],
    context: FitContext,
    others: np.ndarray,
    query: ScoreInput,
) -> PatchScores:
    """``query`` scored by ``scorer`` as if it had been fitted on the views ``others`` only."""
    if isinstance(scorer, KnnScorer):
        # The other views' patches, searched exactly: the same scores as the bank before its coreset.
        patches = context.features[others].reshape(-1, context.features.shape[-1])
        return type(scorer)(KnnBank(build_index(patches, "flat"), context.config.k)).score(query)
    keep_only = getattr(scorer, "with_references", None)
    if keep_only is not None:  # a memory of reference images (WinCLIP+): keep the others' rows
        return keep_only([int(i) for i in others]).score(query)
    subset = replace(context, features=context.features[others], images=[context.images[i] for i in others])
    return scorer_type.fit(subset).score(query)
