"""``lineguard fit --shots K`` (few-shot, with and without confirmed normals) and ``--scorer winclip``,
run in-process on a small synthetic dataset, then ``evaluate`` and ``score`` on what they wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from services.cli import main
from shared.synthetic import write_mvtec_dataset
from tests.support.cli import json_of
from tests.support.clip import TINY_CLIP, save_tiny_clip

FEW = ["--input-size", "64", "--bank-size", "500", "--shot-flips", "horizontal", "--shot-gain-steps", "3"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mvtec_dataset(tmp_path_factory.mktemp("data"), ["fabric"], 10, 3, 3, size=80, seed=4)


@pytest.fixture(scope="module")
def few_dir(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "few"
    assert (
        main(["fit", "--data", str(dataset), "--shots", "3", *FEW, "--review-until", "4", "--out", str(out)])
        == 0
    )
    return out


def test_a_few_shot_fit_takes_the_first_shots_and_says_its_threshold_is_approximate(
    few_dir: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = json.loads((few_dir / "manifest.json").read_text())
    (entry,) = manifest["classes"]
    assert entry["calibration"]["cold_start"] == {
        "shots": 3,
        "confirmed_normals": 0,
        "review_until_confirmed": 4,
    }
    assert entry["calibration"]["threshold_approximate"] is True
    assert manifest["training_data"]["images"] == {"fabric": 3}
    assert (
        manifest["config"]["shot_flips"] == "horizontal" and manifest["config"]["review_until_confirmed"] == 4
    )


def test_the_fit_report_says_approximate_and_review(dataset: Path, tmp_path: Path, capsys) -> None:
    assert (
        main(
            [
                "fit",
                "--data",
                str(dataset),
                "--shots",
                "2",
                "--shots-seed",
                "3",
                *FEW,
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "2-shot model" in out and "APPROXIMATE" in out and "leave-one-out over 2 shot(s)" in out
    assert "the actual rate is unknown" in out and "'review' until 50 confirmed normal images" in out


def test_evaluate_marks_the_few_shot_threshold_approximate(
    few_dir: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, err = json_of(capsys, "evaluate", "--model", str(few_dir), "--data", str(dataset), "--json")
    assert report["classes"]["fabric"]["threshold_approximate"] is True
    assert report["mean"]["threshold_approximate"] is True
    assert "few-shot threshold: approximate" in err


def test_score_gives_review_with_the_reason(few_dir: Path, dataset: Path, capsys) -> None:
    image = dataset / "fabric" / "test" / "good" / "000.png"
    (result,) = json_of(capsys, "score", "--model", str(few_dir), str(image), "--json")[0]["results"]
    assert result["decision"] == "review" and "0 of 4 confirmed normal images" in result["reason"]


def test_a_refit_with_enough_confirmed_normals_ends_the_review(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Confirmed normals as `lineguard labels export` lays them out; a shot among them is not counted.
    confirmed = tmp_path / "export" / "fabric" / "train" / "good"
    confirmed.mkdir(parents=True)
    train = sorted((dataset / "fabric" / "train" / "good").iterdir())
    for image in train[2:7]:
        shutil.copy(image, confirmed / f"feedback-{image.name}")
    out = tmp_path / "refit"
    args = ["fit", "--data", str(dataset), "--shots", "3", *FEW, "--review-until", "4"]
    assert main([*args, "--confirmed-normals", str(tmp_path / "export"), "--out", str(out)]) == 0
    calibration = json.loads((out / "manifest.json").read_text())["classes"][0]["calibration"]
    assert calibration["cold_start"]["confirmed_normals"] == 4  # train[2] is the third shot
    assert calibration["threshold_approximate"] is False and calibration["n_holdout"] == 4
    (result,) = json_of(capsys, "score", "--model", str(out), str(train[9]), "--json")[0]["results"]
    assert result["decision"] in ("pass", "reject") and "cold start" not in result["reason"]


def test_few_shot_options_need_shots(dataset: Path, tmp_path: Path) -> None:
    assert main(["fit", "--data", str(dataset), "--shots-seed", "1", "--out", str(tmp_path / "m")]) == 2
    assert main(["fit", "--data", str(dataset), "--shots", "17", "--out", str(tmp_path / "m")]) == 2
    few = ["fit", "--data", str(dataset), "--shots", "2", "--out", str(tmp_path / "m")]
    assert main([*few, "--labelled-defects", "2"]) == 2
    assert main([*few, "--labelled-defects-dir", str(dataset)]) == 2


def test_winclip_fits_from_a_local_checkpoint_and_evaluates_with_the_weights_directory(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "weights").mkdir()
    weights = save_tiny_clip(tmp_path / "weights" / "tiny_clip.safetensors")
    out = tmp_path / "winclip"
    overrides = json.dumps(TINY_CLIP)
    args = ["fit", "--data", str(dataset), "--scorer", "winclip", "--shots", "2", *FEW, "--out", str(out)]
    assert main([*args, "--clip-weights", str(weights), "--clip-overrides", overrides]) == 0
    entry = json.loads((out / "manifest.json").read_text())["classes"][0]
    assert entry["winclip"]["mode"] == "few-shot" and entry["winclip"]["references"] == 2 * 2 * 3
    assert main(["evaluate", "--model", str(out), "--data", str(dataset)]) == 2  # no weights directory
    assert "sha256" in capsys.readouterr().err
    capsys.readouterr()
    weights_dir = str(weights.parent)
    assert (
        main(
            ["evaluate", "--model", str(out), "--data", str(dataset), "--weights-dir", weights_dir, "--json"]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["classes"]["fabric"]["n_good"] == 3 and report["classes"]["fabric"]["threshold_approximate"]
    # Without weights the fit says what to supply.
    assert main([*args[:-1], str(tmp_path / "none")]) == 2
    assert "--clip-weights FILE" in capsys.readouterr().err


def test_refit_proposals_name_the_cold_start_class_once_enough_normals_are_confirmed(
    few_dir: Path,
    dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LINEGUARD_SCORER__REVIEW_UNTIL_CONFIRMED", raising=False)
    staging = tmp_path / "staging"
    good = staging / "fabric" / "train" / "good"
    good.mkdir(parents=True)
    train = sorted((dataset / "fabric" / "train" / "good").iterdir())
    for image in train[3:6]:
        shutil.copy(image, good / image.name)
    shutil.copy(train[3], good / "again.png")  # the same frame twice counts once
    command = ["refit-proposals", "--model", str(few_dir), "--confirmed-normals", str(staging)]
    capsys.readouterr()
    assert main([*command, "--json"]) == 0
    (proposal,) = json.loads(capsys.readouterr().out)
    assert proposal["proposed"] is False and proposal["confirmed_normals"] == 3 and proposal["needed"] == 4
    assert "3 of 4 confirmed normals" in proposal["reason"]

    shutil.copy(train[6], good / train[6].name)
    with caplog.at_level("INFO", logger="lineguard.model_tools"):
        assert main(command) == 0
    out = capsys.readouterr().out
    assert "1 of 1 classes proposed" in out and "REFIT fabric (cold start)" in out
    assert f"--shots 3 --confirmed-normals {staging}" in out
    events = [r for r in caplog.records if r.getMessage() == "refit_proposed"]
    assert [e.fields["product_class"] for e in events] == ["fabric"]  # type: ignore[attr-defined]

    # The scorer's setting is the bar when it is set (the same number its verdicts wait for).
    monkeypatch.setenv("LINEGUARD_SCORER__REVIEW_UNTIL_CONFIRMED", "10")
    assert main([*command, "--json"]) == 0
    (proposal,) = json.loads(capsys.readouterr().out)
    assert proposal["proposed"] is False and proposal["needed"] == 10
    assert main([*command, "--review-until", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["proposed"] is True
    assert main([*command[:-1], str(tmp_path / "absent")]) == 2
