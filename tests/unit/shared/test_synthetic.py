from __future__ import annotations

import hashlib

import numpy as np
import pytest

from shared.synthetic import DEFECT_TYPES, SYNTHETIC_CLASSES, render_sample, write_mvtec_dataset


@pytest.mark.parametrize("product", SYNTHETIC_CLASSES)
def test_defects_change_exactly_the_masked_pixels(product: str) -> None:
    for defect in DEFECT_TYPES:
        normal, empty = render_sample(product, np.random.default_rng(5), 96)
        defective, mask = render_sample(product, np.random.default_rng(5), 96, defect)
        assert normal.shape == (96, 96, 3) and normal.dtype == np.uint8
        assert not empty.any()
        assert set(np.unique(mask)) == {0, 255}
        changed = np.abs(normal.astype(int) - defective.astype(int)).max(axis=2) > 20
        assert changed[mask == 0].mean() < 0.01  # outside the mask the image is the same
        assert changed[mask == 255].mean() > 0.5  # inside it is visibly different


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError):
        render_sample("teapot", np.random.default_rng(0))
    with pytest.raises(ValueError):
        render_sample("fabric", np.random.default_rng(0), defect="dent")


def test_dataset_layout_is_mvtec_and_deterministic(tmp_path) -> None:
    def digest(root):
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))
        }

    first = write_mvtec_dataset(tmp_path / "a", ["fabric", "pcb"], 3, 2, 4, size=64, seed=3)
    second = write_mvtec_dataset(tmp_path / "b", ["fabric", "pcb"], 3, 2, 4, size=64, seed=3)
    files = digest(first)
    assert files == digest(second)
    assert len([f for f in files if f.startswith("fabric/train/good/")]) == 3
    assert len([f for f in files if f.startswith("pcb/test/good/")]) == 2
    defects = [f for f in files if f.startswith("fabric/test/") and "/good/" not in f]
    assert len(defects) == 4
    for name in defects:
        _, _, kind, filename = name.split("/")
        assert f"fabric/ground_truth/{kind}/{filename[:-4]}_mask.png" in files
