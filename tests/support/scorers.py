"""Test scorers: a base for entries whose whole fitted state is one array, and their registration."""

from __future__ import annotations

from types import MappingProxyType
from typing import ClassVar, Self

import numpy as np
import pytest

from shared.engine.config import FitConfig
from shared.engine.scorers import registry
from shared.engine.scorers.base import ArtifactFiles


class ArrayScorer:
    """A test scorer's fitted state, one array, saved as the tensor ``{tensor_name}_{key}``; a
    subclass adds ``fit``, ``score`` and ``manifest_facts``."""

    tensor_name: ClassVar[str]

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def write(self, files: ArtifactFiles, key: str) -> None:
        files.tensors[f"{self.tensor_name}_{key}"] = self.array

    @classmethod
    def read(cls, files: ArtifactFiles, key: str, config: FitConfig) -> Self:
        return cls(files.tensors[f"{cls.tensor_name}_{key}"])


def register_scorer(monkeypatch: pytest.MonkeyPatch, name: str, scorer: type) -> None:
    """``scorer`` in the registry under ``name`` for this test only."""
    entries = {**registry.SCORERS, name: f"{scorer.__module__}:{scorer.__qualname__}"}
    monkeypatch.setattr(registry, "SCORERS", MappingProxyType(entries))
