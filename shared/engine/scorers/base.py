"""What a per-class patch scorer is, and what it is given.

A scorer models one product class's normal patches. It is fitted once from a ``FitContext`` (the
class's normal patch features, and whatever else a method needs: the images themselves, labelled
defective samples, the settings, the seed, a progress sink), scores a ``ScoreInput`` (a batch of
patch features routed to its class) to raw patch scores, and stores its state as tensors in the
model's safetensors file or as files of its own in the model directory: never pickled. The engine
turns its patch scores into maps, image scores and thresholds the same way for every scorer
(``shared.engine.class_model``), so a new method is one module plus one line in ``registry.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np

from shared.engine.backbones import WeightBytes
from shared.engine.config import FitConfig, FitProgress
from shared.engine.scorers import registry
from shared.errors import ArtifactError, ConfigError


@dataclass(frozen=True)
class LabelledSamples:
    """Defective samples of one class with their ground truth (for methods that learn from defects).

    A scorer that learns from them declares it with the class attribute ``learns_from_defects =
    True``. For any other scorer the engine uses them only to offer an F1-optimal threshold
    (recorded in the calibration, not adopted) and ``lineguard fit`` says so.
    """

    features: np.ndarray  # (M, N, D) float32 patch features, on the same grid as the normal ones
    masks: np.ndarray  # (M, S, S) float32 in 0..1 at model-input resolution (S = config.input_size)
    # (M,) bool: whether sample i's regions were drawn. False: its mask row is all zeros and means
    # "defective somewhere", not "no defect" (image-level label only). None: every sample has a mask.
    has_mask: np.ndarray | None = None
    defect_types: tuple[str, ...] = ()  # each sample's defect type (the MVTec folder name); () if unknown


@dataclass(frozen=True)
class FitContext:
    """Everything a scorer may learn from, for one class."""

    class_name: str
    features: np.ndarray  # (n_images, N, D) float32 patch features of normal images
    grid: tuple[int, int]  # (h, w) of the feature grid, N = h * w
    config: FitConfig
    progress: FitProgress
    # The normal images the features came from, as HxWx3 uint8 (read on access: free when unused).
    images: Sequence[np.ndarray] = ()
    defects: LabelledSamples | None = None  # None: only normal images were supplied

    @property
    def seed(self) -> int:
        return self.config.seed


@dataclass(frozen=True)
class ScoreInput:
    """A batch of images routed to one class."""

    features: np.ndarray  # (B, N, D) float32 patch features
    grid: tuple[int, int]
    images: Sequence[np.ndarray] = ()  # the frames (HxWx3 uint8), for methods that look at pixels


@dataclass(frozen=True)
class PatchScores:
    """A scorer's raw answer for a batch: higher is more anomalous."""

    patch: np.ndarray  # (B, h * w) raw patch scores
    grid: tuple[int, int]  # (h, w) of ``patch``
    # (B,) raw image scores when the method has its own image-level rule; None: taken from the map.
    image: np.ndarray | None = None


@dataclass(frozen=True)
class ArtifactFiles:
    """The part of a model directory a scorer writes to and reads from.

    Writing: files of the scorer's own format go into ``folder``. Reading: a scorer gets them with
    ``read_bytes`` (the bytes the loader already verified against the manifest), never by opening
    a path, so what was checked is what is parsed.
    """

    folder: Path  # files of the scorer's own format (e.g. faiss indexes) go here
    tensors: dict[str, np.ndarray]  # collected into the model's one safetensors file
    read_bytes: Callable[[str], bytes] = field(default=lambda name: _not_loading(name))
    # A weight file a scorer needs besides the model's backbone (e.g. WinCLIP's CLIP checkpoint), by
    # its sha256 and the bare file name recorded at fitting: read and verified by the loader, from
    # the configured weights directory, never from a path the manifest records.
    find_weights: Callable[[str, str], WeightBytes] = field(default=lambda digest, name: _no_weights(digest))


def _not_loading(name: str) -> bytes:
    raise ArtifactError(f"{name}: a model's files are read only while loading a verified artifact")


def _no_weights(digest: str) -> WeightBytes:
    raise ArtifactError(f"weight file {digest}: weights are looked up only while loading a verified artifact")


class PatchScorer(Protocol):
    """One class's model of normal patches. ``key`` names the class's slot in the artifact
    (``000``, ``001``, ...); a scorer prefixes its tensor and file names with its own kind."""

    @classmethod
    def fit(cls, context: FitContext) -> Self: ...

    def score(self, batch: ScoreInput) -> PatchScores: ...

    def manifest_facts(self) -> dict[str, Any]:
        """Facts for the class's manifest entry (JSON values; e.g. the memory bank's size)."""
        ...

    def write(self, files: ArtifactFiles, key: str) -> None: ...

    @classmethod
    def read(cls, files: ArtifactFiles, key: str, config: FitConfig) -> Self: ...


def scorer_class(name: str) -> type[PatchScorer]:
    """The scorer class registered as ``name`` (imported now)."""
    try:
        target = registry.SCORERS[name]
    except KeyError:
        raise ConfigError(f"unknown scorer {name!r}; choose one of {', '.join(registry.SCORERS)}") from None
    module_name, _, attribute = target.partition(":")
    found: type[PatchScorer] = getattr(importlib.import_module(module_name), attribute)
    return found
