"""The scorer registry: one table of names, one protocol, and a new entry that is fitted, scored,
saved and loaded without any engine module naming it."""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Self

import numpy as np
import pytest

from shared.engine.config import SCORER_KINDS, Decision, FitConfig
from shared.engine.fitting import fit_model
from shared.engine.persistence import load_model, save_model
from shared.engine.scorers import registry
from shared.engine.scorers.base import ArtifactFiles, FitContext, PatchScores, ScoreInput, scorer_class
from shared.errors import ConfigError, DatasetError
from shared.synthetic import render_sample

SIZE = 64


class MeanScorer:
    """Distance of each patch to the mean normal feature at its grid position (a test entry)."""

    contexts: ClassVar[list[FitContext]] = []

    def __init__(self, mean: np.ndarray) -> None:
        self.mean = mean  # (N, D)

    @classmethod
    def fit(cls, context: FitContext) -> Self:
        cls.contexts.append(context)
        return cls(context.features.mean(axis=0))

    def score(self, batch: ScoreInput) -> PatchScores:
        return PatchScores(np.linalg.norm(batch.features - self.mean, axis=2), batch.grid)

    def manifest_facts(self) -> dict[str, Any]:
        return {"mean_patches": len(self.mean)}

    def write(self, files: ArtifactFiles, key: str) -> None:
        files.tensors[f"mean_{key}"] = self.mean

    @classmethod
    def read(cls, files: ArtifactFiles, key: str, config: FitConfig) -> Self:
        return cls(files.tensors[f"mean_{key}"])


@pytest.fixture
def mean_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = {**registry.SCORERS, "mean": f"{__name__}:MeanScorer"}
    monkeypatch.setattr(registry, "SCORERS", MappingProxyType(entries))
    MeanScorer.contexts.clear()


def test_the_config_offers_exactly_the_registered_names() -> None:
    assert SCORER_KINDS == registry.SCORER_NAMES == ("knn", "patchcore", "gaussian", "winclip")


@pytest.mark.parametrize("name", registry.SCORER_NAMES)
def test_every_registered_scorer_is_importable_and_has_the_protocol(name: str) -> None:
    found = scorer_class(name)
    for method in ("fit", "score", "manifest_facts", "write", "read"):
        assert callable(getattr(found, method, None)), f"{name} lacks {method}"


def test_an_unregistered_scorer_is_refused() -> None:
    with pytest.raises(ConfigError, match="choose one of knn, patchcore, gaussian"):
        FitConfig(scorer="padim")
    with pytest.raises(ConfigError, match="unknown scorer 'padim'"):
        scorer_class("padim")


def test_a_new_entry_is_fitted_scored_and_stored_through_the_registry_alone(
    mean_registered: None, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    normals = [render_sample("fabric", rng, SIZE)[0] for _ in range(6)]
    defective, mask = render_sample("fabric", rng, SIZE, "spot")
    config = FitConfig(scorer="mean", input_size=SIZE, min_holdout=2)
    model = fit_model({"fabric": normals}, config, defects={"fabric": [(defective, mask)]})

    first, refit = MeanScorer.contexts  # fitted on the training share, then on all normals
    assert first.class_name == "fabric" and first.config.scorer == "mean"
    n_train = len(first.features)
    assert n_train == 4 and len(refit.features) == 6
    assert first.features.shape[1] == first.grid[0] * first.grid[1]
    # The images behind the features, read on access, in the same order.
    assert len(first.images) == n_train and len(refit.images) == 6
    assert sorted(image.tobytes() for image in refit.images) == sorted(image.tobytes() for image in normals)
    # The labelled defect: its features on the same grid, its mask at model-input resolution.
    assert first.defects is not None
    assert first.defects.features.shape == (1, *first.features.shape[1:])
    assert first.defects.masks.shape == (1, SIZE, SIZE)
    assert first.defects.masks.mean() == pytest.approx((mask > 0).mean(), abs=0.02)

    held = model.class_models[0].calibration
    assert held["n_holdout"] == 2 and len(held["heldout_scores"]) == 2
    results = model.score_batch([normals[0], defective])
    assert results[1].raw_score > results[0].raw_score
    assert all(isinstance(result.decision, Decision) for result in results)

    save_model(model, tmp_path / "m")
    entry = json.loads((tmp_path / "m" / "manifest.json").read_text())["classes"][0]
    assert entry["mean_patches"] == first.features.shape[1]
    reloaded = load_model(tmp_path / "m").score_batch([normals[0], defective])
    assert [r.raw_score for r in reloaded] == [r.raw_score for r in results]


def test_defective_samples_of_a_class_that_is_not_fitted_are_refused(mean_registered: None) -> None:
    image, mask = render_sample("fabric", np.random.default_rng(0), SIZE, "spot")
    normals = [render_sample("fabric", np.random.default_rng(i), SIZE)[0] for i in range(3)]
    with pytest.raises(DatasetError, match="washer"):
        fit_model(
            {"fabric": normals},
            FitConfig(scorer="mean", input_size=SIZE),
            defects={"washer": [(image, mask)]},
        )
