"""``lineguard fit``, ``evaluate`` and ``score`` run in-process on a small synthetic dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from services.cli import main
from services.model_tools.cli import INDEX_CHOICES, fit_config_from, register
from shared.engine.config import FEW_SHOT_BLUR_SIGMA, INDEX_KINDS, SCORER_KINDS, FitConfig
from shared.synthetic import write_mvtec_dataset
from tests.support.cli import json_of

CLASS_KEYS = {
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "f1_max",
    "threshold",
    "target_false_reject_rate",
    "false_reject_rate",
    "false_reject_rate_ci95",
    "calibration_error",
    "escape_rate",
    "escapes_by_type",
    "tpr_at_fpr",
    "n_good",
    "n_defect",
    "n_defect_without_mask",
    "n_excluded_trained_on",
    "threshold_approximate",  # true for a few-shot class: its FRR is measured, never known before
}
# The mean over classes: every per-class key but the ones that only mean something per class (its own
# threshold, target and interval, its escapes by defect type). Derived from the list above, not from
# the engine's own list, so a metric missing from the mean still fails the test.
PER_CLASS_ONLY = {"threshold", "target_false_reject_rate", "false_reject_rate_ci95", "escapes_by_type"}
MEAN_KEYS = CLASS_KEYS - PER_CLASS_ONLY


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mvtec_dataset(
        tmp_path_factory.mktemp("data"), ["fabric", "washer"], 8, 3, 3, size=96, seed=4
    )


@pytest.fixture(scope="module")
def model_dir(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "m1"
    args = ["fit", "--data", str(dataset), "--input-size", "96", "--bank-size", "500", "--out", str(out)]
    assert main(args) == 0
    return out


def test_fit_writes_a_model(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert [c["name"] for c in manifest["classes"]] == ["fabric", "washer"]
    assert manifest["backbone"]["name"] == "efficientnet_lite0"
    assert manifest["backbone"]["export"]["file"] in manifest["files"]  # fit includes the export


def test_export_adds_the_backbone_export_that_every_runtime_scores_with(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plain"
    fit = ["fit", "--data", str(dataset), "--input-size", "96", "--bank-size", "300", "--no-export"]
    assert main([*fit, "--runtime", "torch", "--out", str(out)]) == 0
    assert "export" not in json.loads((out / "manifest.json").read_text())["backbone"]
    assert "backbone ran in torch" in capsys.readouterr().out
    image = str(dataset / "fabric" / "test" / "good" / "000.png")
    capsys.readouterr()
    assert main(["score", "--model", str(out), "--runtime", "onnx", image]) == 2
    assert "lineguard export" in capsys.readouterr().err
    assert main(["export", "--model", str(out)]) == 0
    assert "with its backbone export" in capsys.readouterr().out
    scores = {}
    for runtime in ("torch", "openvino", "onnx"):
        result, _ = json_of(capsys, "score", "--model", str(out), "--runtime", runtime, "--json", image)
        scores[runtime] = result["results"][0]["score"]
    assert scores["openvino"] == pytest.approx(scores["torch"], abs=1e-3)
    assert scores["onnx"] == pytest.approx(scores["torch"], abs=1e-3)


def test_fit_refuses_existing_output_and_bad_data(model_dir: Path, dataset: Path, tmp_path: Path) -> None:
    assert main(["fit", "--data", str(dataset), "--out", str(model_dir)]) == 2
    assert main(["fit", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "m")]) == 2
    assert main(["fit", "--data", str(dataset), "--class", "teapot", "--out", str(tmp_path / "m")]) == 2


def test_evaluate_json_has_exactly_the_agreed_keys(
    model_dir: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, err = json_of(capsys, "evaluate", "--model", str(model_dir), "--data", str(dataset), "--json")
    assert "image AUROC" in err  # the readable report goes to stderr, the JSON alone to stdout
    assert set(report) == {
        "classes",
        "mean",
        "routing_accuracy",
        "latency_ms",
        "excluded_trained_on",
        "training_images_recorded",
        "pixel_metrics",
    }
    assert set(report["classes"]) == {"fabric", "washer"}
    manifest = json.loads((model_dir / "manifest.json").read_text())
    for name, metrics in report["classes"].items():
        assert set(metrics) == CLASS_KEYS
        assert metrics["n_good"] == 3 and metrics["n_defect"] == 3 and metrics["n_excluded_trained_on"] == 0
        assert metrics["threshold_approximate"] is False  # set on held-out normal images
        assert metrics["image_auroc"] >= 0.8
        # The calibration error is the achieved false-reject rate minus the model's own target.
        (entry,) = [c for c in manifest["classes"] if c["name"] == name]
        assert metrics["threshold"] == pytest.approx(entry["threshold"])
        assert metrics["target_false_reject_rate"] == entry["calibration"]["target_frr"] == 0.01
        assert metrics["calibration_error"] == pytest.approx(metrics["false_reject_rate"] - 0.01)
        low, high = metrics["false_reject_rate_ci95"]
        assert low <= metrics["false_reject_rate"] <= high
        assert set(metrics["escapes_by_type"]) == {"scratch", "spot", "missing"}
        escaped = sum(v["escaped"] for v in metrics["escapes_by_type"].values())
        assert escaped / 3 == pytest.approx(metrics["escape_rate"])
        assert set(metrics["tpr_at_fpr"]) == {"0.001", "0.01", "0.05"}
    assert set(report["mean"]) == MEAN_KEYS
    assert report["routing_accuracy"] == 1.0
    assert set(report["latency_ms"]) == {"p50", "p99"} and report["latency_ms"]["p50"] > 0
    assert report["excluded_trained_on"] == 0 and report["training_images_recorded"] is True


def test_evaluate_a_single_class_folder(
    model_dir: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, _ = json_of(
        capsys, "evaluate", "--model", str(model_dir), "--data", str(dataset / "washer"), "--json"
    )
    assert list(report["classes"]) == ["washer"] and report["routing_accuracy"] is None


def test_score_prints_results_and_writes_overlays(
    model_dir: Path, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = dataset / "fabric" / "test" / "good" / "000.png"
    bad = next((dataset / "washer" / "test" / "spot").iterdir())
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    capsys.readouterr()
    code = main(
        [
            "score",
            "--model",
            str(model_dir),
            str(good),
            str(bad),
            str(broken),
            "--json",
            "--overlay-dir",
            str(tmp_path / "overlays"),
        ]
    )
    assert code == 1  # one image could not be read; the others were still scored
    report = json.loads(capsys.readouterr().out)
    first, second, third = report["results"]
    assert first["product_class"] == "fabric" and first["decision"] in ("pass", "reject")
    assert second["product_class"] == "washer" and second["decision"] == "reject" and second["regions"]
    assert "corrupt" in third["error"]
    assert Path(first["overlay"]).is_file() and Path(second["overlay"]).is_file()


def test_score_refuses_a_tampered_model(model_dir: Path, dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "m"
    copy.mkdir()
    for item in model_dir.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    (copy / "tensors.safetensors").write_bytes((copy / "tensors.safetensors").read_bytes() + b"x")
    assert main(["score", "--model", str(copy), str(dataset / "fabric" / "test" / "good" / "000.png")]) == 2


def test_fit_with_the_pca_refine_index_records_it_and_evaluates(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m-pca"
    common = ["fit", "--data", str(dataset), "--input-size", "96", "--bank-size", "500"]
    assert (
        main(
            [
                *common,
                "--index",
                "pca-refine",
                "--reduced-dims",
                "32",
                "--refine-factor",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert (config["index"], config["reduced_dims"], config["refine_factor"]) == ("pca-refine", 32, 4)
    result, _ = json_of(capsys, "evaluate", "--model", str(out), "--data", str(dataset), "--json")
    assert set(result["classes"]) == {"fabric", "washer"}


def test_fit_refuses_more_reduced_dims_than_the_features_have(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["fit", "--data", str(dataset), "--input-size", "96", "--bank-size", "500"]
    assert main([*args, "--index", "pca-refine", "--reduced-dims", "4000", "--out", str(tmp_path / "m")]) == 2
    assert "reduced_dims must be between 1 and the feature dimension" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_the_cli_offers_exactly_the_engines_index_kinds() -> None:
    assert INDEX_CHOICES == INDEX_KINDS


def test_the_cli_offers_exactly_the_registered_scorers_and_index_kinds() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    fit = parser.parse_args(["fit", "--data", "d", "--out", "o"])
    assert (fit.scorer, fit.index) == ("knn", "flat")
    for flag, expected in (("--scorer", SCORER_KINDS), ("--index", INDEX_KINDS)):
        for value in expected:
            assert (
                getattr(parser.parse_args(["fit", "--data", "d", "--out", "o", flag, value]), flag[2:])
                == value
            )
    with pytest.raises(SystemExit):
        parser.parse_args(["fit", "--data", "d", "--out", "o", "--scorer", "padim"])


def test_fit_config_from_takes_the_options_named_after_its_fields_and_the_fixed_values_over_them() -> None:
    args = argparse.Namespace(data="x", bank_size=500, k=[1, 3], reduced_dims=50, threads=2)
    config = fit_config_from(args, k=3, backbone="efficientnet_lite0")
    assert (config.bank_size, config.k, config.reduced_dims) == (500, 3, 50)
    assert config.refine_factor == FitConfig.refine_factor  # not an option: FitConfig's default


def test_the_map_blur_is_the_validated_one_for_plain_and_few_shot_fits_unless_given(
    model_dir: Path, dataset: Path, tmp_path: Path
) -> None:
    def blur_of(model: Path) -> float:
        return float(json.loads((model / "manifest.json").read_text())["config"]["blur_sigma"])

    assert blur_of(model_dir) == FitConfig.blur_sigma == 8.0
    common = ["fit", "--data", str(dataset), "--class", "fabric", "--input-size", "96", "--shots", "2"]
    assert main([*common, "--out", str(tmp_path / "few")]) == 0
    assert blur_of(tmp_path / "few") == FEW_SHOT_BLUR_SIGMA == 4.0
    assert main([*common, "--blur-sigma", "6", "--out", str(tmp_path / "given")]) == 0
    assert blur_of(tmp_path / "given") == 6.0
