"""The settings validation: held-out normal training images and the labelled defects only, one row per
layers x blur, metrics that follow the scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.validation import main, table, validate
from shared.synthetic import render_sample


def _write_class(root: Path) -> Path:
    folder = root / "fabric"
    rng = np.random.default_rng(0)
    for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (folder / sub).mkdir(parents=True)
    for i in range(12):
        Image.fromarray(render_sample("fabric", rng, 64)[0]).save(folder / "train" / "good" / f"{i:03d}.png")
    for i in range(4):
        image, mask = render_sample("fabric", rng, 64, "spot")
        Image.fromarray(image).save(folder / "test" / "spot" / f"{i:03d}.png")
        Image.fromarray(mask).save(folder / "ground_truth" / "spot" / f"{i:03d}_mask.png")
    # Test normals are never validation images: an unreadable one would fail the run if read.
    (folder / "test" / "good" / "000.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    import argparse

    root = _write_class(tmp_path_factory.mktemp("data"))
    args = argparse.Namespace(
        data=str(root), backbone="efficientnet_lite0", layers=[(2, 3)], blur=[0.0, 8.0],
        labelled=2, bank_size=200, batch=4,
    )
    return validate(args)


def test_validation_uses_held_out_normals_and_the_labelled_defects_only(rows: list[dict]) -> None:
    assert [(r["layers"], r["blur_sigma"]) for r in rows] == [([2, 3], 0.0), ([2, 3], 8.0)]
    for row in rows:
        assert row["n_normal"] == 3  # 20 % of 12, at least min_holdout
        assert row["n_defect"] == 2
        for key in ("image_auroc", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "pixel_auroc", "aupro"):
            assert 0.0 <= row[key] <= 1.0


def test_the_blur_changes_the_maps_not_the_bank(rows: list[dict]) -> None:
    sharp, blurred = rows
    assert sharp["pixel_auroc"] != blurred["pixel_auroc"]
    text = table(rows)
    assert "| 2+3 | 0 |" in text and "| 2+3 | 8 |" in text


def test_an_unknown_option_is_refused() -> None:
    with pytest.raises(SystemExit):
        main(["--layers", "two"])
