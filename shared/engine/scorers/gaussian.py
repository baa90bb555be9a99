"""PaDiM-style scorer: one Gaussian per grid position over a random subset of channels; a patch's
score is its Mahalanobis distance."""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import torch

from shared.engine.config import FitConfig
from shared.engine.scorers.base import ArtifactFiles, FitContext, PatchScores, ScoreInput

MAX_DIMS = 100  # channels kept (a random subset): the covariance grows with their square
SHRINK = 0.01  # weight of the scaled identity mixed into each covariance


class GaussianScorer:
    """Mean and inverse covariance per grid position, over the channels ``dims``."""

    def __init__(self, mean: np.ndarray, inv_cov: np.ndarray, dims: np.ndarray) -> None:
        self.mean = torch.from_numpy(np.ascontiguousarray(mean, dtype=np.float32))  # (N, d)
        self.inv_cov = torch.from_numpy(np.ascontiguousarray(inv_cov, dtype=np.float32))  # (N, d, d)
        self.dims = torch.from_numpy(np.asarray(dims, dtype=np.int64))

    @classmethod
    def fit(cls, context: FitContext) -> Self:
        context.progress.stage(f"{context.class_name}: gaussian", 1)
        scorer = cls.estimate(torch.from_numpy(context.features), seed=context.seed)
        context.progress.advance(1)
        return scorer

    @classmethod
    def estimate(
        cls, features: torch.Tensor, max_dims: int = MAX_DIMS, seed: int = 0, shrink: float = SHRINK
    ) -> Self:
        """``features``: ``(n_images, N, D)`` of normal images."""
        n_images, _, dim = features.shape
        generator = torch.Generator().manual_seed(seed)
        dims = torch.randperm(dim, generator=generator)[: min(max_dims, dim)].sort().values
        selected = features[:, :, dims].double()
        mean = selected.mean(0)
        centred = (selected - mean).permute(1, 0, 2)  # (N, n, d)
        cov = centred.transpose(1, 2) @ centred / max(n_images - 1, 1)
        eye = torch.eye(len(dims), dtype=torch.float64)
        # Shrink towards a scaled identity: few images cannot estimate a full covariance.
        scale = cov.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-6)[:, None, None]
        cov = (1 - shrink) * cov + shrink * scale * eye + 1e-6 * eye
        inv_cov = torch.linalg.inv(cov)
        return cls(mean.float().numpy(), inv_cov.float().numpy(), dims.numpy())

    def score(self, batch: ScoreInput) -> PatchScores:
        selected = torch.from_numpy(batch.features)[:, :, self.dims] - self.mean
        mahalanobis = torch.einsum("bnd,nde,bne->bn", selected, self.inv_cov, selected)
        return PatchScores(mahalanobis.clamp_min(0).sqrt().numpy(), batch.grid)

    def manifest_facts(self) -> dict[str, Any]:
        return {"bank_size": None}

    def write(self, files: ArtifactFiles, key: str) -> None:
        files.tensors[f"gaussian_mean_{key}"] = self.mean.numpy()
        files.tensors[f"gaussian_inv_cov_{key}"] = self.inv_cov.numpy()
        files.tensors[f"gaussian_dims_{key}"] = self.dims.numpy()

    @classmethod
    def read(cls, files: ArtifactFiles, key: str, config: FitConfig) -> Self:
        return cls(
            files.tensors[f"gaussian_mean_{key}"],
            files.tensors[f"gaussian_inv_cov_{key}"],
            files.tensors[f"gaussian_dims_{key}"],
        )
