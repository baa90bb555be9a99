"""The engine end to end with a small random DINOv2-style ViT loaded from a weight file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.engine.fitting import fit_model
from shared.engine.metrics import auroc
from shared.engine.model import InspectionModel
from shared.engine.persistence import load_model, save_model
from shared.errors import ArtifactError, ImageError
from shared.synthetic import render_sample
from tests.support.engine import (
    FITTED_CLASSES,
    VIT_SIZE,
    synthetic_split,
    synthetic_test,
    tiny_vit_config,
)


@pytest.fixture(scope="module")
def vit_model(tiny_vit_weights: Path) -> InspectionModel:
    # One held-out share (the out-of-fold default has its own tests in test_out_of_fold.py): these
    # tests are about the ViT backbone's way through the engine.
    config = tiny_vit_config(tiny_vit_weights, calibration_folds=1)
    return fit_model(synthetic_split(FITTED_CLASSES, 10, VIT_SIZE), config)


@pytest.fixture(scope="module")
def saved_model(vit_model: InspectionModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("artifacts") / "model"
    save_model(vit_model, path)
    return path


def overlaps_mask(result, mask: np.ndarray) -> bool:
    if not result.regions:
        return False
    top = result.regions[0]
    return bool(mask[top.y : top.y + top.height, top.x : top.x + top.width].any())


@pytest.mark.parametrize("product", FITTED_CLASSES)
def test_defects_are_found_localised_and_routed(vit_model: InspectionModel, product: str) -> None:
    images, labels, masks = synthetic_test(product, VIT_SIZE, n_good=6, n_per_defect=3)
    results = vit_model.score_batch(images)
    assert auroc(labels, np.array([r.raw_score for r in results])) >= 0.8
    located = [overlaps_mask(r, m) for r, m, label in zip(results, masks, labels, strict=True) if label]
    assert np.mean(located) >= 0.6
    assert all(r.product_class == product for r in results)
    for result, image in zip(results, images, strict=True):
        assert result.anomaly_map.shape == image.shape[:2] and result.anomaly_map.dtype == np.float32
        assert 0.0 <= result.score <= 1.0 and 0.0 <= result.route_confidence <= 1.0
        assert result.decision == ("reject" if result.score >= 0.5 else "pass")
        assert result.threshold == vit_model.class_models[vit_model.classes.index(product)].threshold


def test_regions_are_in_frame_pixels_of_any_size(vit_model: InspectionModel) -> None:
    image, _ = render_sample("washer", np.random.default_rng(7), VIT_SIZE, "missing")
    (small,) = vit_model.score_batch([image])
    assert small.regions
    big = np.ascontiguousarray(np.repeat(np.repeat(image, 2, axis=0), 3, axis=1))  # 2x tall, 3x wide
    (result,) = vit_model.score_batch([big])
    assert result.anomaly_map.shape == big.shape[:2]
    assert result.raw_score == pytest.approx(small.raw_score, rel=0.05)
    # The same top region, in the bigger frame's pixels (resizing a resized frame is not exact:
    # allow a few input pixels).
    before, after = small.regions[0], result.regions[0]
    assert abs(after.x - 3 * before.x) <= 12 and abs(after.width - 3 * before.width) <= 24
    assert abs(after.y - 2 * before.y) <= 8 and abs(after.height - 2 * before.height) <= 16
    for after in result.regions:
        assert after.x + after.width <= big.shape[1] and after.y + after.height <= big.shape[0]


def test_unknown_product_is_scored_but_flagged_for_review(vit_model: InspectionModel) -> None:
    images, _, _ = synthetic_test("marble", VIT_SIZE, n_good=3, n_per_defect=0)
    for result in vit_model.score_batch(images):
        assert result.product_class == "unknown"
        assert result.decision == "review"
        assert "unknown product" in result.reason
        assert result.raw_score > 0 and result.threshold > 0  # scored against the nearest class


def test_hint_skips_routing_but_mismatch_is_reported(vit_model: InspectionModel) -> None:
    images, _, _ = synthetic_test("pcb", VIT_SIZE, n_good=2, n_per_defect=0)
    right, wrong, foreign = vit_model.score_batch(images[:1] * 3, hints=["pcb", "fabric", "teapot"])
    assert right.product_class == "pcb" and not right.hint_mismatch and right.reason == ""
    assert wrong.product_class == "fabric" and wrong.hint_mismatch
    assert wrong.reason == "hint 'fabric' but routed to 'pcb'"
    assert wrong.decision in ("review", "reject")  # never a silent pass on the wrong product
    assert foreign.hint_mismatch and foreign.product_class == "pcb" and "teapot" in foreign.reason


def test_timings_and_bad_inputs(vit_model: InspectionModel) -> None:
    timings: dict[str, float] = {}
    images, _, _ = synthetic_test("fabric", VIT_SIZE, n_good=2, n_per_defect=0)
    vit_model.score_batch(images, timings=timings)
    vit_model.score_batch(images, timings=timings)
    assert set(timings) == {"backbone", "knn", "postprocess"} and all(v > 0 for v in timings.values())
    assert vit_model.score_batch([]) == []
    with pytest.raises(ImageError):
        vit_model.score_batch([np.zeros((10, 10), dtype=np.uint8)])
    with pytest.raises(ImageError):
        vit_model.score_batch([np.zeros((10, 10, 4), dtype=np.uint8)])
    with pytest.raises(ValueError):
        vit_model.score_batch(images, hints=["fabric"])


def test_calibration_comes_from_held_out_normals(vit_model: InspectionModel) -> None:
    for class_model in vit_model.class_models:
        calibration = class_model.calibration
        # 3 held out for the threshold, then the final bank from all 10 normals
        assert calibration["n_holdout"] == 3 and calibration["n_train"] == 10
        assert calibration["bank_includes_holdout"] and calibration["folds"] == 1
        held = np.array(calibration["heldout_scores"])
        assert (held > class_model.threshold).mean() <= calibration["target_frr"]
        assert class_model.normaliser(class_model.threshold) == pytest.approx(0.5)
        assert float(class_model.normaliser(np.median(held))) == pytest.approx(0.25)


def test_f1_threshold_is_offered_from_supplied_defects(tiny_vit_weights: Path) -> None:
    model = fit_model(synthetic_split(("fabric",), 8, VIT_SIZE), tiny_vit_config(tiny_vit_weights))
    images, _, _ = synthetic_test("fabric", VIT_SIZE, n_good=0, n_per_defect=2, seed=9)
    frr_threshold = model.class_models[0].threshold
    threshold, f1 = model.offer_f1_threshold("fabric", images)
    assert 0 < f1 <= 1 and model.class_models[0].calibration["f1_threshold"] == threshold
    assert model.class_models[0].threshold == frr_threshold  # offered, not adopted
    model.offer_f1_threshold("fabric", images, adopt=True)
    assert model.class_models[0].threshold == threshold


def test_artifact_round_trip_is_exact(
    vit_model: InspectionModel, saved_model: Path, tiny_vit_weights: Path
) -> None:
    loaded = load_model(saved_model, weights_dir=tiny_vit_weights.parent)
    assert loaded.version == vit_model.version and loaded.classes == vit_model.classes
    images = [render_sample(p, np.random.default_rng(3), VIT_SIZE, "spot")[0] for p in FITTED_CLASSES]
    for before, after in zip(vit_model.score_batch(images), loaded.score_batch(images), strict=True):
        assert before.raw_score == after.raw_score and before.score == after.score
        assert before.product_class == after.product_class and before.regions == after.regions
        np.testing.assert_array_equal(before.anomaly_map, after.anomaly_map)
    manifest = json.loads((saved_model / "manifest.json").read_text())
    for key in (
        "format_version",
        "model_version",
        "backbone",
        "classes",
        "routing",
        "training_data",
        "created_at",
    ):
        assert key in manifest
    assert len(manifest["backbone"]["weights_sha256"]) == 64
    assert set(manifest["files"]) == {
        "tensors.safetensors",
        "index_000.faiss",
        "index_001.faiss",
        "index_002.faiss",
    }
    assert not [p for p in saved_model.parent.iterdir() if p.name.startswith(".")]  # no staging leftovers


def copy_model(source: Path, target: Path) -> Path:
    target.mkdir()
    for item in source.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target


@pytest.mark.parametrize("victim", ["tensors.safetensors", "index_001.faiss"])
def test_a_changed_byte_in_a_data_file_is_refused(saved_model: Path, tmp_path: Path, victim: str) -> None:
    copy = copy_model(saved_model, tmp_path / "model")
    data = bytearray((copy / victim).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / victim).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{victim} .*sha256"):
        load_model(copy)


def test_a_changed_manifest_is_refused(saved_model: Path, tmp_path: Path) -> None:
    copy = copy_model(saved_model, tmp_path / "model")
    text = (copy / "manifest.json").read_text()
    manifest = json.loads(text)
    manifest["classes"][0]["threshold"] *= 2
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(ArtifactError, match="modified"):
        load_model(copy)
    (copy / "manifest.json").write_text(text[:-20])
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_model(copy)
    manifest = json.loads(text)
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not supported"):
        load_model(copy)


def test_missing_files_and_weights_are_refused(saved_model: Path, tmp_path: Path) -> None:
    copy = copy_model(saved_model, tmp_path / "model")
    (copy / "index_002.faiss").unlink()
    with pytest.raises(ArtifactError, match=r"missing index_002\.faiss"):
        load_model(copy)
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        load_model(tmp_path)
    other_weights = tmp_path / "other.safetensors"
    from tests.support.engine import save_tiny_vit

    save_tiny_vit(other_weights, seed=11)
    with pytest.raises(ArtifactError, match="sha256"):
        load_model(saved_model, weights=other_weights)
    manifest = json.loads((saved_model / "manifest.json").read_text())
    with pytest.raises(ArtifactError) as excinfo:
        load_model(_without_weights(saved_model, tmp_path))
    assert manifest["backbone"]["weights_sha256"] in str(excinfo.value)


def _without_weights(saved_model: Path, tmp_path: Path) -> Path:
    """A copy whose recorded weight path points nowhere, with the manifest digest re-sealed."""
    from shared.engine.artifacts import manifest_digest

    copy = copy_model(saved_model, tmp_path / "moved")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["backbone"]["weights_path"] = str(tmp_path / "gone.safetensors")
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_saving_never_overwrites_by_accident(vit_model: InspectionModel, saved_model: Path) -> None:
    with pytest.raises(ArtifactError, match="already exists"):
        save_model(vit_model, saved_model)


@pytest.mark.parametrize("scorer", ["gaussian", "patchcore"])
def test_alternative_scorers_find_defects_and_round_trip(
    tiny_vit_weights: Path, tmp_path: Path, scorer: str
) -> None:
    config = tiny_vit_config(tiny_vit_weights, scorer=scorer)
    model = fit_model(synthetic_split(("fabric",), 10, VIT_SIZE), config)
    images, labels, _ = synthetic_test("fabric", VIT_SIZE, n_good=5, n_per_defect=2)
    scores = [r.raw_score for r in model.score_batch(images)]
    assert auroc(labels, np.array(scores)) >= 0.8
    save_model(model, tmp_path / "m")
    reloaded = [r.raw_score for r in load_model(tmp_path / "m", weights=tiny_vit_weights).score_batch(images)]
    assert reloaded == scores


def test_pca_refine_index_scores_like_the_exact_index(tiny_vit_weights: Path, tmp_path: Path) -> None:
    data = synthetic_split(("fabric",), 10, VIT_SIZE)
    exact = fit_model(data, tiny_vit_config(tiny_vit_weights))
    refined = fit_model(
        data, tiny_vit_config(tiny_vit_weights, index="pca-refine", reduced_dims=32, refine_factor=8)
    )
    images, _, _ = synthetic_test("fabric", VIT_SIZE, n_good=3, n_per_defect=1)
    exact_scores = np.array([r.raw_score for r in exact.score_batch(images)])
    refined_scores = np.array([r.raw_score for r in refined.score_batch(images)])
    np.testing.assert_allclose(refined_scores, exact_scores, rtol=1e-3)
    save_model(refined, tmp_path / "m")
    reloaded = load_model(tmp_path / "m", weights_dir=tiny_vit_weights.parent)
    assert reloaded.config.index == "pca-refine" and reloaded.config.reduced_dims == 32
    assert [r.raw_score for r in reloaded.score_batch(images)] == refined_scores.tolist()
