"""MVTec AD layout discovery: ``ROOT/<class>/{train/good,test/<type>,ground_truth/<type>}``.

``ROOT`` may also be a single class folder (the class is then named after the folder). Labelled
defects for training come from the same layout (``labelled_defects``): a dataset's own test
folders, or a separate folder such as the one ``lineguard labels export`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import DatasetError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class TestSample:
    path: Path
    defect_type: str  # "good" or the defect folder's name
    mask_path: Path | None  # None for good images, or a defect image without a mask file

    @property
    def is_defect(self) -> bool:
        return self.defect_type != "good"


@dataclass(frozen=True)
class ClassData:
    name: str
    root: Path
    train: list[Path]
    test: list[TestSample]


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_data(folder: Path) -> ClassData:
    test: list[TestSample] = []
    test_root = folder / "test"
    if test_root.is_dir():
        for type_dir in sorted(p for p in test_root.iterdir() if p.is_dir()):
            for image in _images(type_dir):
                mask = None
                if type_dir.name != "good":
                    candidate = folder / "ground_truth" / type_dir.name / f"{image.stem}_mask.png"
                    mask = candidate if candidate.is_file() else None
                test.append(TestSample(image, type_dir.name, mask))
    return ClassData(folder.name, folder, _images(folder / "train" / "good"), test)


def discover(root: str | Path, classes: list[str] | None = None) -> list[ClassData]:
    """Classes under ``root`` (or ``root`` itself if it is one class folder), filtered by ``classes``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist")
    if (root / "train").is_dir() or (root / "test").is_dir():
        found = [_class_data(root)]
    else:
        found = [
            _class_data(child)
            for child in sorted(root.iterdir())
            if child.is_dir() and ((child / "train").is_dir() or (child / "test").is_dir())
        ]
    if not found:
        raise DatasetError(
            f"{root} holds no class folders in MVTec layout (<class>/train/good, <class>/test)"
        )
    if classes:
        by_name = {data.name: data for data in found}
        missing = [name for name in classes if name not in by_name]
        if missing:
            raise DatasetError(f"class(es) {', '.join(missing)} not in {root}; found {', '.join(by_name)}")
        found = [by_name[name] for name in classes]
    return found


def labelled_defects(data: ClassData, per_type: int | None, seed: int) -> list[TestSample]:
    """Defective test images of ``data`` to train on: ``per_type`` of each defect type (all of them
    when None or when a type has fewer), chosen deterministically. Per class one generator seeded
    with ``seed`` visits the defect types in sorted order; for each it draws ``min(per_type, n)``
    positions without replacement from the type's images sorted by file name. The result is in
    type order, then name order."""
    if per_type is not None and per_type < 1:
        raise DatasetError("the number of labelled defects per type must be at least 1")
    rng = np.random.default_rng(seed)
    chosen: list[TestSample] = []
    for kind in sorted({sample.defect_type for sample in data.test if sample.is_defect}):
        of_kind = sorted((s for s in data.test if s.defect_type == kind), key=lambda s: s.path.name)
        count = len(of_kind) if per_type is None else min(per_type, len(of_kind))
        positions = rng.choice(len(of_kind), size=count, replace=False)
        chosen.extend(of_kind[int(i)] for i in sorted(positions))
    return chosen
