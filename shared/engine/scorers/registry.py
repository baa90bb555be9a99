"""The one registry of per-class patch scorers: a name -> ``"module:Class"`` table.

The table is plain data so that ``FitConfig`` (torch-free) can validate a scorer name without
importing torch, faiss or the scorer itself; ``shared.engine.scorers.base.scorer_class`` imports the
class when a model is fitted or loaded.

Adding a scorer: write a module in this package with a class that satisfies
``shared.engine.scorers.base.PatchScorer`` and add one line here. Nothing else in the engine names
scorers; the CLI offers every name listed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

SCORERS: Mapping[str, str] = MappingProxyType(
    {
        "knn": "shared.engine.scorers.knn:KnnScorer",
        "patchcore": "shared.engine.scorers.knn:PatchCoreScorer",
        "gaussian": "shared.engine.scorers.gaussian:GaussianScorer",
        "winclip": "shared.engine.scorers.winclip:WinClipScorer",
        "supersimplenet": "shared.engine.scorers.supersimplenet:SuperSimpleNetScorer",
        "uninet": "shared.engine.scorers.uninet:UniNetScorer",
    }
)
SCORER_NAMES: tuple[str, ...] = tuple(SCORERS)
