"""Out-of-fold calibration: every normal image is scored by a scorer that never saw it, and the
threshold is the quantile of those scores; the features wait on disk in one contiguous block per
view."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pytest

from shared.engine.calibration import out_of_fold, threshold_at_frr
from shared.engine.class_model import raw_maps
from shared.engine.config import FitConfig
from shared.engine.feature_store import FeatureStore
from shared.engine.fitting import fit_model
from shared.engine.scorers.base import FitContext, PatchScores, ScoreInput
from shared.errors import ConfigError
from shared.synthetic import render_sample
from tests.support.scorers import ArrayScorer, register_scorer

SIZE = 64


class NearestImageScorer(ArrayScorer):
    """Patch score = distance to the same grid cell of the nearest training image (a test entry
    that remembers which images it was fitted on); its array is the training features, (n, N, D)."""

    tensor_name = "nearest"
    fitted: ClassVar[list[tuple[np.ndarray, list[bytes]]]] = []

    @classmethod
    def fit(cls, context: FitContext) -> Self:
        bank = np.array(context.features)  # a copy: the store's view is only lent for the fit
        cls.fitted.append((bank, [image.tobytes() for image in context.images]))
        return cls(bank)

    def score(self, batch: ScoreInput) -> PatchScores:
        distances = np.linalg.norm(batch.features[:, None] - self.array[None], axis=3)  # (B, n, N)
        return PatchScores(distances.min(axis=1), batch.grid)

    def manifest_facts(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def nearest_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    register_scorer(monkeypatch, "nearest", NearestImageScorer)
    NearestImageScorer.fitted.clear()


def test_folds_cover_every_image_once() -> None:
    folds = out_of_fold(23, 5, seed=3)
    assert [len(f) for f in folds] == [4, 5, 4, 5, 5]
    assert sorted(np.concatenate(folds).tolist()) == list(range(23))
    assert [f.tolist() for f in out_of_fold(23, 5, seed=3)] == [f.tolist() for f in folds]  # seeded
    assert len(out_of_fold(3, 5, seed=0)) == 3  # never more folds than images
    with pytest.raises(ValueError):
        out_of_fold(1, 5, seed=0)


def test_every_normal_is_scored_by_a_scorer_that_never_saw_it(nearest_registered: None) -> None:
    rng = np.random.default_rng(7)
    normals = [render_sample("washer", rng, SIZE)[0] for _ in range(11)]
    config = FitConfig(scorer="nearest", input_size=SIZE, calibration_folds=4)
    model = fit_model({"washer": normals}, config)
    calibration = model.class_models[0].calibration
    *fold_fits, (final_bank, final_images) = NearestImageScorer.fitted
    assert len(fold_fits) == 4 and len(final_images) == 11
    # Which fold held each image out: the one fit that lacks it.
    holders = {
        image.tobytes(): [i for i, (_, seen) in enumerate(fold_fits) if image.tobytes() not in seen]
        for image in normals
    }
    assert all(len(missing) == 1 for missing in holders.values())
    # Its recorded score is what that fold's scorer gives it (rows of the final bank are its features).
    features_of = dict(zip(final_images, final_bank, strict=True))
    expected = []
    for image in normals:
        (fold,) = holders[image.tobytes()]
        scorer = NearestImageScorer(fold_fits[fold][0])
        batch = ScoreInput(features_of[image.tobytes()][None], model.extractor([image])[1], [image])
        expected.append(float(raw_maps(scorer, batch, model.config)[1][0]))
    assert calibration["heldout_scores"] == pytest.approx(expected, rel=1e-6)
    assert calibration["n_holdout"] == 11 and calibration["folds"] == 4 and calibration["n_train"] == 11
    recorded = np.array(calibration["heldout_scores"])
    assert model.class_models[0].threshold == threshold_at_frr(recorded, config.target_frr)
    # Scored by the final scorer, a training image is at distance 0: the held-out scores are not.
    assert min(expected) > 0
    assert model.score_batch([normals[0]])[0].raw_score < 1e-3 * min(expected)


class ServedFoldScorer(NearestImageScorer):
    """Like a learned scorer whose scores share one scale across fits (a standardised network):
    never refitted on all normal images, its fold scorers' out-of-fold scores are pooled."""

    tensor_name = "served"
    refit_on_all_normals = False

    @classmethod
    def pools_fold_scores(cls, config: FitConfig, labelled: bool) -> bool:
        return True


def test_a_scorer_that_is_not_refitted_can_pool_its_folds_and_serve_the_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register_scorer(monkeypatch, "served", ServedFoldScorer)
    NearestImageScorer.fitted.clear()
    rng = np.random.default_rng(5)
    normals = [render_sample("washer", rng, SIZE)[0] for _ in range(10)]
    config = FitConfig(scorer="served", input_size=SIZE, calibration_folds=5)
    model = fit_model({"washer": normals}, config)
    calibration = model.class_models[0].calibration
    assert len(NearestImageScorer.fitted) == 5  # the K fold scorers and no final one
    assert calibration["folds"] == 5 and calibration["n_holdout"] == 10
    assert calibration["served_fold"] == 1 and calibration["bank_includes_holdout"] is False
    first = out_of_fold(10, 5, config.seed)[0]
    assert calibration["n_train"] == 10 - len(first)
    served_bank, served_images = NearestImageScorer.fitted[0]
    assert not {normals[i].tobytes() for i in first} & set(served_images)
    np.testing.assert_array_equal(model.class_models[0].scorer.array, served_bank)
    # Every recorded score is out of fold, and the served scorer gives its own fold the same scores.
    assert min(calibration["heldout_scores"]) > 0
    rescored = [result.raw_score for result in model.score_batch([normals[i] for i in first])]
    recorded = np.array(calibration["heldout_scores"])[first]
    assert rescored == pytest.approx(recorded.tolist(), rel=1e-5)
    pooled = np.array(calibration["heldout_scores"])
    assert model.class_models[0].threshold == threshold_at_frr(pooled, config.target_frr)


def test_a_train_only_bank_cannot_be_cross_fitted() -> None:
    normals = [render_sample("washer", np.random.default_rng(i), SIZE)[0] for i in range(4)]
    with pytest.raises(ConfigError, match="calibration_folds 1"):
        fit_model({"washer": normals}, FitConfig(input_size=SIZE, bank_from_all_normals=False))
    with pytest.raises(ConfigError, match="calibration_folds"):
        FitConfig(calibration_folds=0)


def test_feature_store_views_are_contiguous_and_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(13, 6, 4)).astype(np.float32)
    parts = out_of_fold(13, 4, seed=1)
    store = FeatureStore(tmp_path / "f", parts, cyclic=True)
    for start in range(0, 13, 5):
        store.write(start, features[start : start + 5])
    for k, part in enumerate(parts):
        rest, rest_idx = store.rest(k)
        assert sorted(rest_idx.tolist()) == sorted(set(range(13)) - set(part.tolist()))
        np.testing.assert_array_equal(rest, features[rest_idx])
        assert rest.base is not None  # a view, not a copy
        held, held_idx = store.part(k)
        assert held_idx.tolist() == part.tolist()
        np.testing.assert_array_equal(held, features[held_idx])
        store.release()  # pages handed back are read again from the file
        np.testing.assert_array_equal(store.part(k)[0], features[held_idx])
    everything, all_idx = store.everything()
    assert sorted(all_idx.tolist()) == list(range(13))
    np.testing.assert_array_equal(everything, features[all_idx])
    store.close()
    # A single held-out share: part 0 held out, part 1 the rest, no second copy on disk.
    single = FeatureStore(tmp_path / "g", [np.array([4, 1]), np.array([0, 2, 3])], cyclic=False)
    single.write(0, features[:5])
    np.testing.assert_array_equal(single.rest(0)[0], features[[0, 2, 3]])
    assert (tmp_path / "g").stat().st_size == 5 * 6 * 4 * 4
    with pytest.raises(ValueError):
        single.rest(1)
    single.close()
    with pytest.raises(ValueError, match="exactly once"):
        FeatureStore(tmp_path / "h", [np.array([0, 1]), np.array([1])], cyclic=True)
