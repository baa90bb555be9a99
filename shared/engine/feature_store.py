"""Patch features of one class's normal images, kept on disk while the class is fitted.

Fitting reads every normal image's patch features several times (each out-of-fold scorer, then the
final one) but never needs them all at full size in memory: they are embedded once, batch by batch,
written to a temporary file, and read back through a private memory map, whose pages the kernel
may drop whenever memory is short and which ``release`` hands back after each scorer. What a
memory-bank scorer then holds is its coreset's 128-dimension projection of the patches, not the
features themselves.

The file is laid out so that every view a fit needs is one contiguous block, hence a plain
``np.ndarray`` without a copy (what scorers are given): the parts P_0 .. P_{m-1} of a split, then,
for cross-fitting, P_0 .. P_{m-2} once more. "Every part but P_k" is then P_{k+1} .. P_{k+m-1}, one
run of rows, for every k; "everything" is P_0 .. P_{m-1}.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_FLOAT = np.dtype(np.float32)


class FeatureStore:
    """``(n_images, N, D)`` float32 features on disk, in the row layout described above."""

    def __init__(self, path: Path, parts: Sequence[np.ndarray], *, cyclic: bool) -> None:
        self.parts = [np.asarray(part, dtype=np.int64) for part in parts]
        if not self.parts or any(len(part) == 0 for part in self.parts):
            raise ValueError("a feature store needs one or more non-empty parts")
        blocks = self.parts + (self.parts[:-1] if cyclic else [])
        self._starts = np.cumsum([0] + [len(block) for block in blocks])
        layout = np.concatenate(blocks)  # the image index of every row
        self.n_images = len(np.concatenate(self.parts))
        if sorted(np.concatenate(self.parts).tolist()) != list(range(self.n_images)):
            raise ValueError("the parts must cover the images 0 .. n - 1 exactly once")
        self._rows_of: list[list[int]] = [[] for _ in range(self.n_images)]
        for row, image in enumerate(layout):
            self._rows_of[int(image)].append(row)
        self._layout = layout
        self.cyclic = cyclic
        self.path = path
        self._fd: int | None = None
        self._row_shape: tuple[int, int] | None = None
        self._map: mmap.mmap | None = None
        self._array: np.ndarray | None = None

    # -- writing -----------------------------------------------------------------------------------
    def write(self, first_image: int, features: np.ndarray) -> None:
        """Features of the images ``first_image .. first_image + len(features) - 1``."""
        features = np.ascontiguousarray(features, dtype=_FLOAT)
        if self._fd is None:
            self._row_shape = (features.shape[1], features.shape[2])
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.ftruncate(self._fd, len(self._layout) * self._row_bytes)
        if features.shape[1:] != self._row_shape:
            raise ValueError(f"features {features.shape[1:]} differ from the first batch's {self._row_shape}")
        for offset, image_features in enumerate(features):
            data = image_features.tobytes()
            for row in self._rows_of[first_image + offset]:
                os.pwrite(self._fd, data, row * self._row_bytes)

    @property
    def _row_bytes(self) -> int:
        assert self._row_shape is not None
        return self._row_shape[0] * self._row_shape[1] * _FLOAT.itemsize

    # -- reading -----------------------------------------------------------------------------------
    def _rows(self, start: int, stop: int) -> np.ndarray:
        if self._array is None:
            if self._fd is None or self._row_shape is None:
                raise ValueError("nothing was written to the feature store")
            size = len(self._layout) * self._row_bytes
            # ACCESS_COPY: a private mapping, writable as numpy and torch expect, never written back.
            self._map = mmap.mmap(self._fd, size, access=mmap.ACCESS_COPY)
            self._array = np.frombuffer(self._map, dtype=_FLOAT).reshape(len(self._layout), *self._row_shape)
        return self._array[start:stop]

    def rest(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Features and image indices of every part but part ``k`` (one contiguous block)."""
        m = len(self.parts)
        if m == 1:
            raise ValueError("one part has no rest")
        if k != 0 and not self.cyclic:
            raise ValueError("only part 0's rest is contiguous in a store that is not cyclic")
        start, stop = int(self._starts[k + 1]), int(self._starts[k + m])
        return self._rows(start, stop), self._layout[start:stop]

    def part(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Features and image indices of part ``k``."""
        start, stop = int(self._starts[k]), int(self._starts[k + 1])
        return self._rows(start, stop), self._layout[start:stop]

    def everything(self) -> tuple[np.ndarray, np.ndarray]:
        """Features and image indices of all images (in part order)."""
        stop = int(self._starts[len(self.parts)])
        return self._rows(0, stop), self._layout[:stop]

    def release(self) -> None:
        """Hand back the pages read so far (they are re-read from the file when used again)."""
        if self._map is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        """Unmap and close the file. A view a scorer kept stays readable (the mapping then lives
        on until the view goes)."""
        self._array = None
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view is still alive somewhere
                self._map.close()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
