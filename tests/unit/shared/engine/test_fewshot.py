"""Few-shot fitting: views of the shots, leave-one-out thresholds marked approximate, confirmed
normals, and verdicts held at 'review' until enough confirmed normals are fitted in."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shared.engine.backbones import get_spec
from shared.engine.class_model import maps_and_scores
from shared.engine.config import Decision, FitConfig
from shared.engine.fewshot import exposure_gains, fit_few_shot, select_shots, shot_views, views_per_shot
from shared.engine.manifest_checks import check_manifest
from shared.engine.metrics import auroc
from shared.engine.model import InspectionModel
from shared.engine.persistence import load_model, save_model
from shared.engine.scorers.base import PatchScores, ScoreInput
from shared.engine.scorers.index import KnnBank, build_index
from shared.engine.scorers.knn import KnnScorer
from shared.errors import ArtifactError, ConfigError, DatasetError
from shared.synthetic import render_sample

SIZE = 64


def few_config(**changes: object) -> FitConfig:
    config = FitConfig(input_size=SIZE, bank_size=2000, shot_flips="horizontal", shot_gain_steps=3)
    return replace(config, **changes)  # type: ignore[arg-type]


def samples(product: str, n: int, seed: int, defect: str | None = None) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [render_sample(product, rng, 80, defect)[0] for _ in range(n)]


def test_views_are_the_shot_first_then_mirrors_and_exposures() -> None:
    image = np.random.default_rng(0).integers(20, 120, (30, 40, 3), dtype=np.uint8)
    config = few_config(shot_flips="both", shot_gain_max=2.0, shot_gain_steps=3)
    assert exposure_gains(config) == pytest.approx([0.5, 1.0, 2.0])
    views = shot_views(image, config)
    assert len(views) == 4 * 3
    assert np.array_equal(views[0], image)
    assert np.array_equal(views[1], image[:, ::-1]) and np.array_equal(views[3], image[::-1, ::-1])
    brighter = [v for v in views if v.mean() > image.mean() * 1.5]
    assert len(brighter) == 4 and all(v.dtype == np.uint8 for v in views)
    assert exposure_gains(few_config(shot_gain_steps=4)) == pytest.approx(
        [0.5, 0.7937, 1.0, 1.2599, 2.0], abs=1e-3
    )
    assert exposure_gains(few_config(shot_gain_steps=1)) == [1.0]
    assert len(shot_views(image, few_config(shot_flips="none", shot_gain_steps=1))) == 1


def test_shots_are_the_first_ones_or_a_seeded_choice() -> None:
    names = [Path(f"{i:03d}.png") for i in range(20)]
    assert select_shots(names, 3) == names[:3]
    chosen = select_shots(names, 4, seed=7)
    assert chosen == select_shots(names, 4, seed=7) and chosen != names[:4] and chosen == sorted(chosen)
    for bad in (0, 17):
        with pytest.raises(ConfigError, match="1 to 16"):
            select_shots(names, bad)
    with pytest.raises(DatasetError, match="only 2"):
        select_shots(names[:2], 3)


@pytest.fixture(scope="module")
def shots() -> list[np.ndarray]:
    return samples("fabric", 4, seed=0)


@pytest.fixture(scope="module")
def few_model(shots: list[np.ndarray]):
    return fit_few_shot({"fabric": shots}, few_config(review_until_confirmed=5))


def test_a_few_shot_class_says_its_threshold_is_approximate_and_how_it_was_set(few_model) -> None:
    calibration = few_model.class_models[0].calibration
    assert (
        calibration["n_train"] == 4 and calibration["n_views"] == 4 * 2 * 3 and calibration["n_holdout"] == 0
    )
    assert calibration["threshold_approximate"] is True
    assert "leave-one-out" in calibration["threshold_rule"] and "unknown" in calibration["threshold_rule"]
    assert len(calibration["heldout_scores"]) == 4  # one per shot
    assert calibration["cold_start"] == {"shots": 4, "confirmed_normals": 0, "review_until_confirmed": 5}


def test_leave_one_out_scores_each_shot_by_the_other_shots_views_only(few_model, shots) -> None:
    config = few_model.config
    views = [[view for view in shot_views(shot, config)] for shot in shots]
    features = [few_model.embed(group)[0] for group in views]
    grid = few_model.embed(views[0][:1])[1]
    scores = few_model.class_models[0].calibration["heldout_scores"]
    for held in range(len(shots)):
        others = np.concatenate([f for i, f in enumerate(features) if i != held]).reshape(
            -1, features[0].shape[-1]
        )
        scorer = KnnScorer(KnnBank(build_index(others, "flat"), 1))
        expected = maps_and_scores(scorer.score(ScoreInput(features[held][:1], grid)), config)[1][0]
        assert scores[held] == pytest.approx(expected, rel=1e-4)


def test_verdicts_are_review_until_enough_confirmed_normals(few_model) -> None:
    frames = samples("fabric", 2, seed=3) + samples("fabric", 2, seed=4, defect="spot")
    results = few_model.score_batch(frames)
    assert [r.decision for r in results] == [Decision.REVIEW] * 4
    assert all(
        "cold start: 4-shot model" in r.reason and "0 of 5 confirmed normal" in r.reason for r in results
    )
    assert all(r.reason.endswith(("the model says pass", "the model says reject")) for r in results)
    assert min(r.raw_score for r in results[2:]) > max(r.raw_score for r in results[:2])


def test_confirmed_normals_set_the_threshold_join_the_bank_and_end_the_review(shots) -> None:
    confirmed = samples("fabric", 5, seed=11)
    model = fit_few_shot(
        {"fabric": shots}, few_config(review_until_confirmed=5), confirmed={"fabric": confirmed}
    )
    calibration = model.class_models[0].calibration
    assert calibration["n_holdout"] == 5 and len(calibration["heldout_scores"]) == 5
    assert (
        calibration["threshold_approximate"] is False and "confirmed normal" in calibration["threshold_rule"]
    )
    assert calibration["cold_start"]["confirmed_normals"] == 5
    assert model.metadata["training_data"]["images"] == {"fabric": 4 + 5}
    results = model.score_batch(samples("fabric", 2, seed=3) + samples("fabric", 2, seed=4, defect="spot"))
    assert {r.decision for r in results} <= {Decision.PASS, Decision.REJECT}
    assert all("cold start" not in r.reason for r in results)
    # Fewer confirmed normals than required: the threshold is theirs, the review stays.
    fewer = fit_few_shot(
        {"fabric": shots}, few_config(review_until_confirmed=6), confirmed={"fabric": confirmed}
    )
    assert fewer.class_models[0].calibration["threshold_approximate"] is True
    assert fewer.score_batch(confirmed[:1])[0].decision == Decision.REVIEW


def test_one_shot_is_calibrated_leaving_one_view_out() -> None:
    model = fit_few_shot({"washer": samples("washer", 1, seed=2)}, few_config())
    calibration = model.class_models[0].calibration
    assert len(calibration["heldout_scores"]) == calibration["n_views"] == 6
    assert "only shot" in calibration["threshold_rule"] and calibration["threshold_approximate"] is True


def test_few_shot_models_separate_defects_and_route_classes() -> None:
    data = {"fabric": samples("fabric", 4, seed=0), "washer": samples("washer", 4, seed=1)}
    model = fit_few_shot(data, few_config())
    for product, seed in (("fabric", 20), ("washer", 21)):
        good, bad = samples(product, 6, seed), samples(product, 6, seed + 100, defect="spot")
        results = model.score_batch(good + bad)
        assert [r.product_class for r in results] == [product] * 12
        labels = np.r_[np.zeros(6), np.ones(6)]
        assert auroc(labels, np.array([r.raw_score for r in results])) >= 0.8


def test_the_review_gate_survives_saving_and_its_counts_are_checked(few_model, tmp_path: Path) -> None:
    save_model(few_model, tmp_path / "m")
    reloaded = load_model(tmp_path / "m")
    frame = samples("fabric", 1, seed=3)
    assert reloaded.score_batch(frame)[0].decision == Decision.REVIEW
    assert reloaded.class_models[0].calibration["cold_start"]["review_until_confirmed"] == 5
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    for value in ("5", -1, True, None):
        changed = json.loads(json.dumps(manifest))
        changed["classes"][0]["calibration"]["cold_start"]["confirmed_normals"] = value
        with pytest.raises(ArtifactError, match=r"cold_start\.confirmed_normals"):
            check_manifest(changed, "m")


def test_a_few_shot_fit_refuses_what_it_cannot_do(shots) -> None:
    with pytest.raises(DatasetError, match="1 to 16"):
        fit_few_shot({"fabric": shots * 5}, few_config())
    with pytest.raises(DatasetError, match="washer"):
        fit_few_shot({"fabric": shots}, few_config(), confirmed={"washer": shots})
    with pytest.raises(ConfigError):
        few_config(shot_gain_max=0.5)


def test_the_excess_image_score_ignores_a_shift_of_the_whole_map() -> None:
    rng = np.random.default_rng(0)
    patch = rng.random((2, 49)).astype(np.float32)
    patch[1] = patch[0] + 5.0  # the same part, photographed so that everything scores higher
    config = few_config(image_score="excess")
    maps, scores = maps_and_scores(PatchScores(patch, (7, 7)), config)
    assert scores[0] == pytest.approx(scores[1], abs=1e-4)
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), 0.0, atol=1e-4)  # maps are centred too
    assert scores[0] == pytest.approx(maps[0].max())
    _, plain = maps_and_scores(PatchScores(patch, (7, 7)), few_config(image_score="max"))
    assert plain[1] == pytest.approx(plain[0] + 5.0, abs=1e-3)


def test_the_scorer_can_ask_for_more_or_fewer_confirmed_normals_than_the_fit(few_model) -> None:
    frames = samples("fabric", 2, seed=3) + samples("fabric", 2, seed=4, defect="spot")
    try:
        few_model.review_until_confirmed = 7  # a plant that wants more before trusting the model
        results = few_model.score_batch(frames)
        assert [r.decision for r in results] == [Decision.REVIEW] * 4
        assert all("0 of 7 confirmed normal" in r.reason for r in results)
        few_model.review_until_confirmed = 0  # the gate off: the model's own decisions
        results = few_model.score_batch(frames)
        assert {r.decision for r in results} <= {Decision.PASS, Decision.REJECT}
        assert [r.decision for r in results[2:]] == [Decision.REJECT] * 2
        assert all("cold start" not in r.reason for r in results)
    finally:
        few_model.review_until_confirmed = None
    assert few_model.score_batch(frames[:1])[0].decision == Decision.REVIEW  # back to the manifest's 5


def bank_size(model: InspectionModel) -> int:
    scorer = model.class_models[0].scorer
    assert isinstance(scorer, KnnScorer)
    return scorer.bank.size


def test_views_per_shot_fill_the_bank_budget_and_never_drop_an_original() -> None:
    # 224 px: 784 patches a view, 20 views a shot by default.
    assert views_per_shot(1, 784, 20, 32_768) == 20
    assert views_per_shot(2, 784, 20, 32_768) == 20
    assert views_per_shot(4, 784, 20, 32_768) == 10
    assert views_per_shot(16, 784, 20, 32_768) == 2
    assert views_per_shot(16, 784, 20, 1_000) == 1  # the originals alone overflow: still every shot
    assert views_per_shot(16, 784, 20, 0) == 20  # 0: no budget, every view (and a coreset)


def test_views_beyond_the_budget_are_left_out_and_the_bank_keeps_every_patch(shots) -> None:
    patches_per_view = 64  # 64 px input: an 8 x 8 grid
    model = fit_few_shot({"fabric": shots}, few_config(shot_bank_patches=4 * 3 * patches_per_view))
    calibration = model.class_models[0].calibration
    assert calibration["n_views"] == 4 * 3  # 3 of the 6 views of each shot
    assert calibration["bank"] == {"views_per_shot": 3, "patches": 12 * 64, "kept": "all"}
    assert bank_size(model) == 12 * patches_per_view  # no coreset
    # Leave-one-out scores each shot by the first 3 views of the other shots, exactly.
    config = model.config
    views = [shot_views(shot, config)[:3] for shot in shots]
    features = [model.embed(group)[0] for group in views]
    grid = model.embed(views[0][:1])[1]
    others = np.concatenate(features[1:]).reshape(-1, features[0].shape[-1])
    scorer = KnnScorer(KnnBank(build_index(others, "flat"), 1))
    expected = maps_and_scores(scorer.score(ScoreInput(features[0][:1], grid)), config)[1][0]
    assert calibration["heldout_scores"][0] == pytest.approx(expected, rel=1e-4)


def test_a_bank_over_the_budget_is_a_coreset(shots) -> None:
    # No budget: every view, and the coreset of bank_size (the behaviour before the budget).
    unbounded = fit_few_shot({"fabric": shots}, few_config(shot_bank_patches=0, bank_size=500))
    calibration = unbounded.class_models[0].calibration
    assert calibration["n_views"] == 4 * 6 and bank_size(unbounded) == 500
    assert calibration["bank"] == {"views_per_shot": 6, "patches": 24 * 64, "kept": "coreset"}
    # The originals alone overflow the budget: one view a shot, and a coreset of bank_size.
    tight = fit_few_shot({"fabric": shots}, few_config(shot_bank_patches=100, bank_size=150))
    assert tight.class_models[0].calibration["n_views"] == 4
    assert bank_size(tight) == 150
    with pytest.raises(ConfigError, match="shot_bank_patches"):
        few_config(shot_bank_patches=-1)


def test_a_few_shot_fit_takes_the_backbones_few_shot_layers_unless_layers_are_asked_for(
    few_model, shots
) -> None:
    spec = get_spec(few_model.config.backbone)
    assert spec.few_shot_layers == (2, 3, 4) and spec.default_layers == (2, 3)
    assert few_model.config.layers == (2, 3, 4)  # recorded in the manifest as fitted
    features, _ = few_model.embed(shots[:1])
    assert features.shape[-1] == 40 + 112 + 320  # efficientnet_lite0's stages at strides 8, 16, 32
    asked = fit_few_shot({"fabric": shots[:2]}, few_config(layers=(2, 3)))
    assert asked.config.layers == (2, 3) and asked.embed(shots[:1])[0].shape[-1] == 40 + 112
