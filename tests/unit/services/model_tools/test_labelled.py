"""``lineguard fit --labelled-defects`` / ``--labelled-defects-dir``: which images are taken, how
the manifest records them, what the scorer is told, and ``lineguard evaluate`` leaving them out."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from services.cli import main
from shared.engine.dataset import discover, labelled_defects
from shared.synthetic import write_mvtec_dataset

FIT = ["--input-size", "96", "--bank-size", "300", "--calibration-folds", "3"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 9 defective test images per class: 3 of each type.
    return write_mvtec_dataset(
        tmp_path_factory.mktemp("data"), ["fabric", "washer"], 8, 4, 9, size=96, seed=2
    )


@pytest.fixture(scope="module")
def labelled_model(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("models") / "labelled"
    import io
    from contextlib import redirect_stdout

    printed = io.StringIO()
    with redirect_stdout(printed):
        code = main(["fit", "--data", str(dataset), *FIT, "--labelled-defects", "1", "--out", str(out)])
    assert code == 0
    return out, printed.getvalue()


def test_the_chosen_defects_are_recorded_by_sha256(dataset: Path, labelled_model: tuple[Path, str]) -> None:
    model_dir, _ = labelled_model
    manifest = json.loads((model_dir / "manifest.json").read_text())
    training = manifest["training_data"]
    for class_data in discover(dataset):
        chosen = labelled_defects(class_data, 1, seed=0)
        assert len(chosen) == 3 and {s.defect_type for s in chosen} == {"scratch", "spot", "missing"}
        recorded = training["labelled_defects"][class_data.name]
        assert recorded == [
            {"name": s.path.name, "defect_type": s.defect_type, "mask": True, "sha256": sha256(s.path)}
            for s in chosen
        ]
        assert training["sha256"][class_data.name] == [sha256(path) for path in class_data.train]
        entry = next(c for c in manifest["classes"] if c["name"] == class_data.name)
        assert entry["calibration"]["labelled_defects"] == {
            "n": 3,
            "by_type": {"missing": 1, "scratch": 1, "spot": 1},
            "with_mask": 3,
            "learned_from": False,
        }
        # knn cannot learn from them: an F1 threshold is offered, the false-reject one stays.
        assert "f1_threshold" in entry["calibration"]
        assert entry["threshold"] != entry["calibration"]["f1_threshold"]


def test_fit_says_what_the_defects_were_used_for(labelled_model: tuple[Path, str]) -> None:
    _, printed = labelled_model
    for name in ("fabric", "washer"):
        assert f"{name}: 3 labelled defects (missing 1, scratch 1, spot 1; 3 with masks)" in printed
    assert printed.count("does not learn from defects") == 2 and "NOT adopted" in printed
    assert "out-of-fold scores of all 8 normal images (3 folds" in printed


def test_evaluate_leaves_out_what_the_model_trained_on(
    dataset: Path, labelled_model: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir, _ = labelled_model
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model_dir), "--data", str(dataset), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    for metrics in report["classes"].values():
        assert metrics["n_excluded_trained_on"] == 3
        assert metrics["n_defect"] == 6 and metrics["n_good"] == 4
        assert {v["n"] for v in metrics["escapes_by_type"].values()} == {2}
    assert report["excluded_trained_on"] == 6
    assert "(3 the model was trained on left out)" in captured.err
    # A training image copied into the test set is recognised by its bytes and left out too.
    copy = model_dir.parent / "with-copy"
    shutil.copytree(dataset, copy)
    train_image = copy / "fabric" / "train" / "good" / "000.png"
    shutil.copy(train_image, copy / "fabric" / "test" / "good" / "zz_copy.png")
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model_dir), "--data", str(copy / "fabric"), "--json"]) == 0
    fabric = json.loads(capsys.readouterr().out)["classes"]["fabric"]
    assert fabric["n_excluded_trained_on"] == 4 and fabric["n_good"] == 4


def test_labelled_defects_from_a_separate_folder_with_confirmed_normals(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The layout 'lineguard labels export' writes: test/<type>, ground_truth/<type>, train/good.
    labels = tmp_path / "labels"
    source = dataset / "washer"
    (labels / "washer" / "test" / "dent").mkdir(parents=True)
    (labels / "washer" / "ground_truth" / "dent").mkdir(parents=True)
    (labels / "washer" / "train" / "good").mkdir(parents=True)
    defects = sorted((source / "test" / "spot").iterdir())
    for image in defects:
        shutil.copy(image, labels / "washer" / "test" / "dent" / image.name)
    first_mask = source / "ground_truth" / "spot" / f"{defects[0].stem}_mask.png"
    shutil.copy(first_mask, labels / "washer" / "ground_truth" / "dent" / first_mask.name)
    for image in sorted((source / "test" / "good").iterdir())[:2]:  # confirmed normals
        shutil.copy(image, labels / "washer" / "train" / "good" / f"frame_{image.name}")
    shutil.copy(source / "train" / "good" / "000.png", labels / "washer" / "train" / "good" / "dup.png")
    (labels / "other").mkdir()  # a class that is not being fitted: not read
    out = tmp_path / "m"
    capsys.readouterr()
    args = ["fit", "--data", str(dataset), *FIT, "--labelled-defects-dir", str(labels), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    manifest = json.loads(out.joinpath("manifest.json").read_text())
    training = manifest["training_data"]
    assert [e["defect_type"] for e in training["labelled_defects"]["washer"]] == ["dent"] * 3
    assert [e["mask"] for e in training["labelled_defects"]["washer"]] == [True, False, False]
    assert "fabric" not in training["labelled_defects"]
    # Two new confirmed normals joined washer's 8 (the duplicate of a training image did not).
    assert training["confirmed_normals"] == {"washer": 2} and training["images"]["washer"] == 10
    assert "washer: 2 confirmed normal images added" in printed
    assert "fabric: no labelled defects found for this class" in printed
    washer = next(c for c in manifest["classes"] if c["name"] == "washer")
    assert washer["calibration"]["labelled_defects"]["with_mask"] == 1
    # Evaluating on the original data leaves out the confirmed normals and the labelled defects.
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(dataset), "--class", "washer", "--json"]) == 0
    washer_report = json.loads(capsys.readouterr().out)["classes"]["washer"]
    assert washer_report["n_excluded_trained_on"] == 5
    assert washer_report["n_good"] == 2 and washer_report["n_defect"] == 6
