"""MVTec AD layout discovery: ``ROOT/<class>/{train/good,test/<type>,ground_truth/<type>}``.

``ROOT`` may also be a single class folder (the class is then named after the folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
