"""Which labelled defects a fit takes: N per type, by sorted name and a seeded choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.engine.dataset import discover, labelled_defects
from shared.errors import DatasetError

TYPES = {"crack": 7, "blowhole": 4, "fray": 2}


def write_class(root: Path, names_reversed: bool = False) -> Path:
    folder = root / "tile"
    pixels = np.zeros((8, 8, 3), np.uint8)
    (folder / "train" / "good").mkdir(parents=True)
    Image.fromarray(pixels).save(folder / "train" / "good" / "000.png")
    (folder / "test" / "good").mkdir(parents=True)
    Image.fromarray(pixels).save(folder / "test" / "good" / "000.png")
    for kind, count in TYPES.items():
        (folder / "test" / kind).mkdir(parents=True)
        (folder / "ground_truth" / kind).mkdir(parents=True)
        order = range(count - 1, -1, -1) if names_reversed else range(count)
        for i in order:  # files created in a different order must not change the choice
            Image.fromarray(pixels + i).save(folder / "test" / kind / f"{kind}_{i:02d}.png")
            if i % 2 == 0:
                Image.fromarray(pixels).save(folder / "ground_truth" / kind / f"{kind}_{i:02d}_mask.png")
    return root


def names(samples) -> list[str]:
    return [sample.path.name for sample in samples]


def test_n_per_type_sorted_and_seeded(tmp_path: Path) -> None:
    (data,) = discover(write_class(tmp_path / "a"))
    chosen = labelled_defects(data, 3, seed=0)
    # Types in sorted order; three of each (both of fray's two); no normal image.
    assert [s.defect_type for s in chosen] == ["blowhole"] * 3 + ["crack"] * 3 + ["fray"] * 2
    for kind in TYPES:
        of_kind = names(s for s in chosen if s.defect_type == kind)
        assert of_kind == sorted(of_kind) and all(name.startswith(kind) for name in of_kind)
    # Masks come along where the dataset has them.
    for sample in chosen:
        has_mask = int(sample.path.stem.rsplit("_", 1)[1]) % 2 == 0
        assert (sample.mask_path is not None) == has_mask
    # Deterministic: the same seed gives the same images, also from files written in another order.
    (again,) = discover(write_class(tmp_path / "b", names_reversed=True))
    assert names(labelled_defects(again, 3, seed=0)) == names(chosen)
    # The seed matters, and it is numpy's generator visiting the sorted types in turn.
    rng = np.random.default_rng(0)
    expected = []
    for kind in sorted(TYPES):
        files = sorted(f"{kind}_{i:02d}.png" for i in range(TYPES[kind]))
        picks = rng.choice(len(files), size=min(3, len(files)), replace=False)
        expected += [files[i] for i in sorted(picks)]
    assert names(chosen) == expected
    assert any(names(labelled_defects(data, 3, seed=s)) != names(chosen) for s in range(1, 4))


def test_all_of_them_or_none_below_one(tmp_path: Path) -> None:
    (data,) = discover(write_class(tmp_path))
    assert len(labelled_defects(data, None, seed=0)) == sum(TYPES.values())
    assert len(labelled_defects(data, 100, seed=0)) == sum(TYPES.values())
    with pytest.raises(DatasetError):
        labelled_defects(data, 0, seed=0)
