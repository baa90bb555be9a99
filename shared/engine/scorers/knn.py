"""Memory-bank scorers: a greedy k-center coreset of the class's normal patches behind a faiss index.

``knn``: a patch's score is its mean distance to the k nearest bank patches, the image score comes
from the anomaly map. ``patchcore``: the same patch scores, and PatchCore's image score (the most
anomalous patch's distance, re-weighted by how isolated its nearest bank patch is).
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import torch

from shared.engine.config import FitConfig
from shared.engine.coreset import greedy_coreset
from shared.engine.scorers.base import ArtifactFiles, FitContext, PatchScores, ScoreInput
from shared.engine.scorers.index import KnnBank, build_index


class KnnScorer:
    """Mean distance of each patch to its k nearest neighbours in the class's memory bank."""

    def __init__(self, bank: KnnBank) -> None:
        self.bank = bank

    @classmethod
    def fit(cls, context: FitContext) -> Self:
        config = context.config
        patches = torch.from_numpy(context.features.reshape(-1, context.features.shape[-1]))
        target = config.bank_size
        if config.bank_ratio is not None:
            target = max(1, int(config.bank_ratio * len(patches)))
        target = min(target, len(patches))
        context.progress.stage(f"{context.class_name}: coreset", target)
        chosen = greedy_coreset(
            patches,
            target,
            projection_dim=config.projection_dim,
            seed=config.seed,
            progress=context.progress.advance,
        )
        bank = patches[torch.from_numpy(np.sort(chosen))].numpy()
        index = build_index(
            bank,
            config.index,
            seed=config.seed,
            reduced_dims=config.reduced_dims,
            refine_factor=config.refine_factor,
        )
        return cls(KnnBank(index, config.k))

    def score(self, batch: ScoreInput) -> PatchScores:
        return PatchScores(self.bank.patch_scores(batch.features), batch.grid)

    def manifest_facts(self) -> dict[str, Any]:
        return {"bank_size": self.bank.size}

    def write(self, files: ArtifactFiles, key: str) -> None:
        self.bank.write(files.folder / f"index_{key}.faiss")

    @classmethod
    def read(cls, files: ArtifactFiles, key: str, config: FitConfig) -> Self:
        return cls(KnnBank.from_bytes(files.read_bytes(f"index_{key}.faiss"), config.k))


class PatchCoreScorer(KnnScorer):
    """The memory bank with PatchCore's re-weighted image score."""

    def score(self, batch: ScoreInput) -> PatchScores:
        patch = self.bank.patch_scores(batch.features)
        return PatchScores(patch, batch.grid, self.image_scores(batch.features, patch))

    def image_scores(self, features: np.ndarray, patch_scores: np.ndarray, b: int = 9) -> np.ndarray:
        """The most anomalous patch's 1-NN distance, re-weighted by how isolated its nearest bank
        patch is (a patch near a sparse bank region counts for less)."""
        worst = patch_scores.argmax(axis=1)
        query = features[np.arange(len(features)), worst]  # (B, D)
        s_star = patch_scores[np.arange(len(features)), worst]
        _, nearest = self.bank.search(query, 1)
        vectors = self.bank.vectors()
        _, neighbours = self.bank.search(vectors[nearest[:, 0]], min(b, self.bank.size))
        to_neighbours = np.linalg.norm(vectors[neighbours] - query[:, None, :], axis=2)  # (B, b)
        # 1 - exp(s*) / sum(exp(||x* - m||)), computed stably in log space.
        top = to_neighbours.max(axis=1, keepdims=True)
        log_denominator = np.log(np.exp(to_neighbours - top).sum(axis=1)) + top[:, 0]
        weight = 1.0 - np.exp(s_star - log_denominator)
        return weight * s_star
