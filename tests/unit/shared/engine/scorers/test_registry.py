"""The scorer registry: one table of names, one protocol, and a new entry that is fitted, scored,
saved and loaded without any engine module naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pytest

from shared.engine.config import SCORER_KINDS, Decision, FitConfig
from shared.engine.fitting import DefectSample, fit_model
from shared.engine.persistence import load_model, save_model
from shared.engine.scorers import registry
from shared.engine.scorers.base import FitContext, PatchScores, ScoreInput, scorer_class
from shared.errors import ConfigError, DatasetError
from shared.synthetic import render_sample
from tests.support.scorers import ArrayScorer, register_scorer

SIZE = 64


class MeanScorer(ArrayScorer):
    """Distance of each patch to the mean normal feature at its grid position (a test entry); its
    array is that mean, (N, D)."""

    tensor_name = "mean"
    contexts: ClassVar[list[FitContext]] = []

    @classmethod
    def fit(cls, context: FitContext) -> Self:
        cls.contexts.append(context)
        return cls(context.features.mean(axis=0))

    def score(self, batch: ScoreInput) -> PatchScores:
        return PatchScores(np.linalg.norm(batch.features - self.array, axis=2), batch.grid)

    def manifest_facts(self) -> dict[str, Any]:
        return {"mean_patches": len(self.array)}


@pytest.fixture
def mean_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    register_scorer(monkeypatch, "mean", MeanScorer)
    MeanScorer.contexts.clear()


def test_the_config_offers_exactly_the_registered_names() -> None:
    expected = ("knn", "patchcore", "gaussian", "winclip", "supersimplenet", "uninet")
    assert SCORER_KINDS == registry.SCORER_NAMES == expected


@pytest.mark.parametrize("name", registry.SCORER_NAMES)
def test_every_registered_scorer_is_importable_and_has_the_protocol(name: str) -> None:
    found = scorer_class(name)
    for method in ("fit", "score", "manifest_facts", "write", "read"):
        assert callable(getattr(found, method, None)), f"{name} lacks {method}"


def test_an_unregistered_scorer_is_refused() -> None:
    names = "knn, patchcore, gaussian, winclip, supersimplenet, uninet"
    with pytest.raises(ConfigError, match=f"choose one of {names}"):
        FitConfig(scorer="padim")
    with pytest.raises(ConfigError, match="unknown scorer 'padim'"):
        scorer_class("padim")


def test_a_new_entry_is_fitted_scored_and_stored_through_the_registry_alone(
    mean_registered: None, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    normals = [render_sample("fabric", rng, SIZE)[0] for _ in range(6)]
    defective, mask = render_sample("fabric", rng, SIZE, "spot")
    config = FitConfig(scorer="mean", input_size=SIZE)
    model = fit_model(
        {"fabric": normals}, config, defects={"fabric": [DefectSample(defective, mask, "spot")]}
    )

    # Five fold scorers (each on the normals outside its fold), then the final one on all normals.
    *folds, refit = MeanScorer.contexts
    assert len(folds) == 5 and [len(c.features) for c in folds] == [5, 5, 5, 5, 4]
    first = folds[0]
    assert first.class_name == "fabric" and first.config.scorer == "mean"
    assert first.features.shape[1] == first.grid[0] * first.grid[1]
    # The images behind the features, read on access, in the same order.
    assert len(first.images) == len(first.features) and len(refit.images) == len(refit.features) == 6
    assert sorted(image.tobytes() for image in refit.images) == sorted(image.tobytes() for image in normals)
    # The labelled defect: its features on the same grid, its mask at model-input resolution, its type.
    for context in MeanScorer.contexts:
        assert context.defects is not None
        assert context.defects.features.shape == (1, *first.features.shape[1:])
        assert context.defects.masks.shape == (1, SIZE, SIZE)
        assert context.defects.masks.mean() == pytest.approx((mask > 0).mean(), abs=0.02)
        assert context.defects.has_mask is not None and context.defects.has_mask.tolist() == [True]
        assert context.defects.defect_types == ("spot",)

    held = model.class_models[0].calibration
    assert held["n_holdout"] == 6 and len(held["heldout_scores"]) == 6 and held["folds"] == 5
    # The mean scorer does not learn from defects: the defect only offers an F1 threshold.
    assert held["labelled_defects"] == {"n": 1, "by_type": {"spot": 1}, "with_mask": 1, "learned_from": False}
    assert "f1_threshold" in held and held["n_defect_samples"] == 1
    results = model.score_batch([normals[0], defective])
    assert results[1].raw_score > results[0].raw_score
    assert all(isinstance(result.decision, Decision) for result in results)

    save_model(model, tmp_path / "m")
    entry = json.loads((tmp_path / "m" / "manifest.json").read_text())["classes"][0]
    assert entry["mean_patches"] == first.features.shape[1]
    reloaded = load_model(tmp_path / "m").score_batch([normals[0], defective])
    assert [r.raw_score for r in reloaded] == [r.raw_score for r in results]


def test_a_single_held_out_share_fits_on_the_rest_then_on_all(mean_registered: None) -> None:
    rng = np.random.default_rng(0)
    normals = [render_sample("fabric", rng, SIZE)[0] for _ in range(6)]
    defective, _mask = render_sample("fabric", rng, SIZE, "spot")
    config = FitConfig(scorer="mean", input_size=SIZE, min_holdout=2, calibration_folds=1)
    model = fit_model({"fabric": normals}, config, defects={"fabric": [(defective, None)]})
    first, refit = MeanScorer.contexts  # fitted on the training share, then on all normals
    assert len(first.features) == 4 and len(refit.features) == 6
    assert first.defects is not None and first.defects.has_mask is not None
    assert first.defects.has_mask.tolist() == [False] and first.defects.masks.max() == 0.0
    held = model.class_models[0].calibration
    assert held["n_holdout"] == 2 and len(held["heldout_scores"]) == 2 and held["folds"] == 1
    assert held["labelled_defects"]["with_mask"] == 0


def test_defective_samples_of_a_class_that_is_not_fitted_are_refused(mean_registered: None) -> None:
    image, mask = render_sample("fabric", np.random.default_rng(0), SIZE, "spot")
    normals = [render_sample("fabric", np.random.default_rng(i), SIZE)[0] for i in range(3)]
    with pytest.raises(DatasetError, match="washer"):
        fit_model(
            {"fabric": normals},
            FitConfig(scorer="mean", input_size=SIZE),
            defects={"washer": [(image, mask)]},
        )
