"""Pieces the learned scorers share: masks on the feature grid, a k-NN prior with leave-one-image-out
scores for the training images, and network weights in and out of the model's safetensors.

The learned scorers (``supersimplenet``, ``uninet``) train small networks on the frozen backbone's
patch features, which the engine computes once per image (``FitContext.features``): every epoch
reuses them, so training costs only the networks' own work.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shared.engine.coreset import greedy_coreset
from shared.engine.scorers.base import ArtifactFiles, FitContext
from shared.engine.scorers.index import KnnBank, build_index
from shared.errors import ArtifactError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from shared.engine.config import FitConfig

TrainingSettings = TypeVar("TrainingSettings", bound="DataclassInstance")

# Leave-one-image-out search depth: a training patch's score is its distance to the nearest bank
# patch of another image, looked for among this many neighbours (the k-th distance if all are its own).
_LOO_NEIGHBOURS = 16


class LearnedScorer(Generic[TrainingSettings]):
    """What every learned scorer tells the fitting: it trains on labelled defects (with masks or
    without), and its threshold belongs to the network it calibrated (see ``fitting._fit_class``).

    A subclass names its training settings (``settings_type``, a dataclass with an ``epochs``
    field and a default for every field) and trains in ``fit_with``.
    """

    learns_from_defects = True
    refit_on_all_normals = False
    settings_type: type[TrainingSettings]

    @classmethod
    def settings(cls, config: FitConfig) -> TrainingSettings:
        """The default settings, for the fit's ``epochs`` when it sets them."""
        settings = cls.settings_type()
        if config.epochs is not None:
            settings = replace(settings, epochs=config.epochs)
        return settings

    @classmethod
    def fit(cls, context: FitContext) -> Self:
        return cls.fit_with(context, cls.settings(context.config))

    @classmethod
    def pools_fold_scores(cls, config: FitConfig, labelled: bool) -> bool:
        """Whether the image scores of networks trained on different folds share one scale (the
        fitting then pools their out-of-fold scores for the threshold). A raw logit or map maximum
        does not: each network has a scale of its own."""
        return False

    @classmethod
    def fit_with(cls, context: FitContext, settings: TrainingSettings) -> Self:
        raise NotImplementedError


def masks_on_grid(masks: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """``(M, S, S)`` masks (0..1) -> ``(M, h, w)`` {0, 1} on the feature grid.

    A cell is defective when at least half of it is covered; a defect thinner than half a cell
    still marks its best-covered cells, so thin cracks do not vanish from the target.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[:, None]
    share = F.adaptive_avg_pool2d(tensor, grid)[:, 0]  # the covered share of each cell
    top = share.flatten(1).amax(1).clamp(max=0.5)[:, None, None]
    return ((share >= top) & (share > 0)).float()


def to_maps(features: np.ndarray | torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, N, D)`` patch features -> ``(B, D, h, w)`` float32 feature maps."""
    tensor = torch.as_tensor(features, dtype=torch.float32)
    batch, _, dim = tensor.shape
    return tensor.reshape(batch, grid[0], grid[1], dim).permute(0, 3, 1, 2).contiguous()


class KnnPrior:
    """A coreset memory bank of the class's normal patches whose distance is a feature channel.

    At fit time every training image is scored against the bank without its own patches (leave
    one image out), so that the networks learn on the scores a new normal image gets, not on the
    near-zero distances of patches that are themselves in the bank.
    """

    def __init__(self, bank: KnnBank) -> None:
        self.bank = bank

    @classmethod
    def fit(cls, context: FitContext, features: np.ndarray) -> tuple[KnnPrior, np.ndarray]:
        """The prior of ``features`` ``(n, N, D)`` and their leave-one-image-out scores ``(n, N)``."""
        config = context.config
        n_images, n_patches, dim = features.shape
        patches = torch.from_numpy(features.reshape(-1, dim))
        target = min(config.bank_size, len(patches))
        context.progress.stage(f"{context.class_name}: k-NN prior coreset", target)
        chosen = np.sort(
            greedy_coreset(
                patches,
                target,
                projection_dim=config.projection_dim,
                seed=config.seed,
                progress=context.progress.advance,
            )
        )
        bank = KnnBank(build_index(patches[torch.from_numpy(chosen)].numpy(), "flat"), 1)
        owner = chosen // n_patches  # the training image each bank patch came from
        depth = min(_LOO_NEIGHBOURS, bank.size)
        scores = np.empty((n_images, n_patches), dtype=np.float32)
        for start in range(0, n_images, 16):
            part = features[start : start + 16]
            dist, ids = bank.search(part.reshape(-1, dim), depth)
            image = np.repeat(np.arange(start, start + len(part)), n_patches)
            other = owner[ids] != image[:, None]
            first = np.where(other.any(axis=1), other.argmax(axis=1), depth - 1)
            scores[start : start + len(part)] = dist[np.arange(len(dist)), first].reshape(
                len(part), n_patches
            )
        return cls(bank), scores

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``(B, N, D)`` -> ``(B, N)`` distance to the nearest bank patch."""
        return self.bank.patch_scores(features)

    def write(self, files: ArtifactFiles, name: str) -> None:
        self.bank.write(files.folder / name)

    @classmethod
    def read(cls, files: ArtifactFiles, name: str) -> KnnPrior:
        return cls(KnnBank.from_bytes(files.read_bytes(name), 1))


@dataclass(frozen=True)
class PriorFusion:
    """One image score from a network's image logit and the k-NN prior's image score (the largest
    log distance of the image's patches): each standardised with its mean and std over the class's
    training normals, then added with equal weights.

    The two disagree on different defects (CV over the labelled defects, docs/benchmarks.md), so
    their sum ranks defects above normals more often than either. The prior's training scores are
    leave-one-image-out, the network's are on images it trained on; the calibration threshold comes
    from held-out normals in any case.
    """

    logit_mean: float
    logit_std: float
    prior_mean: float
    prior_std: float

    @classmethod
    def of(cls, logits: torch.Tensor, prior_scores: torch.Tensor) -> PriorFusion:
        """From the training normals' image logits ``(n,)`` and prior image scores ``(n,)``."""
        logit, prior = logits.double(), prior_scores.double()
        floor = 1e-6  # a constant score (one training image, or a degenerate network) divides by it
        return cls(
            float(logit.mean()),
            max(float(logit.std(unbiased=False)), floor),
            float(prior.mean()),
            max(float(prior.std(unbiased=False)), floor),
        )

    def combine(self, logits: torch.Tensor, prior_scores: torch.Tensor) -> torch.Tensor:
        logit = (logits.double() - self.logit_mean) / self.logit_std
        return logit + (prior_scores.double() - self.prior_mean) / self.prior_std

    def write(self, tensors: dict[str, np.ndarray], name: str) -> None:
        tensors[name] = np.array(
            [self.logit_mean, self.logit_std, self.prior_mean, self.prior_std], dtype=np.float64
        )

    @classmethod
    def read(cls, tensors: dict[str, np.ndarray], name: str) -> PriorFusion | None:
        """The fusion ``write`` stored, checked (four finite numbers, both stds > 0); None if absent."""
        value = tensors.get(name)
        if value is None:
            return None
        if value.shape != (4,) or value.dtype.kind != "f" or not np.isfinite(value).all():
            raise ArtifactError(f"{name}: not four finite numbers")
        if value[1] <= 0 or value[3] <= 0:
            raise ArtifactError(f"{name}: standard deviations must be positive")
        return cls(*(float(v) for v in value))


def prior_image_scores(log_distances: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` or ``(B, 1, h, w)`` log k-NN distances -> ``(B,)``: each image's largest."""
    return log_distances.flatten(1).amax(1)


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and std ``(1, C, 1, 1)`` of a class's normal feature maps, which
    standardise the networks' input."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, maps: torch.Tensor) -> ChannelStats:
        """The statistics of the normal maps ``(B, C, h, w)`` (the std floored, so a constant
        channel does not divide by 0)."""
        return cls(maps.mean((0, 2, 3), keepdim=True), maps.std((0, 2, 3), keepdim=True).clamp_min(1e-6))

    @property
    def channels(self) -> int:
        return int(self.mean.shape[1])

    def standardise(self, maps: torch.Tensor) -> torch.Tensor:
        return (maps - self.mean) / self.std

    def write(self, tensors: dict[str, np.ndarray], prefix: str) -> None:
        """Into ``tensors`` as ``{prefix}.mean`` and ``{prefix}.std``."""
        tensors[f"{prefix}.mean"] = self.mean.numpy().reshape(-1).copy()
        tensors[f"{prefix}.std"] = self.std.numpy().reshape(-1).copy()

    @classmethod
    def read(cls, tensors: dict[str, np.ndarray], prefix: str) -> ChannelStats:
        """The statistics ``write`` stored, checked (same length, finite, std > 0)."""
        mean, std = tensors.get(f"{prefix}.mean"), tensors.get(f"{prefix}.std")
        if mean is None or std is None or mean.ndim != 1 or mean.shape != std.shape:
            raise ArtifactError(f"{prefix}: feature statistics missing or misshapen")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ArtifactError(f"{prefix}: feature statistics are not finite and positive")
        return cls(
            torch.from_numpy(mean.astype(np.float32)).view(1, -1, 1, 1),
            torch.from_numpy(std.astype(np.float32)).view(1, -1, 1, 1),
        )


def log_distance(distances: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The prior channel: log of the k-NN distance (floored), so that far patches do not dominate."""
    return torch.log(torch.as_tensor(distances, dtype=torch.float32).clamp_min(1e-3))


def weights_to_tensors(module: nn.Module, prefix: str, tensors: dict[str, np.ndarray]) -> None:
    """Every parameter and buffer of ``module`` into ``tensors`` as ``{prefix}.{name}``."""
    for name, value in module.state_dict().items():
        tensors[f"{prefix}.{name}"] = value.detach().cpu().numpy().copy()


def weights_from_tensors(module: nn.Module, prefix: str, tensors: dict[str, np.ndarray]) -> None:
    """Load ``module``'s weights from ``tensors``; every name and shape must match exactly."""
    expected = module.state_dict()
    found = {
        name[len(prefix) + 1 :]: value for name, value in tensors.items() if name.startswith(prefix + ".")
    }
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise ArtifactError(f"{prefix}: weights missing {missing[:3]} or unexpected {extra[:3]}")
    state: dict[str, Any] = {}
    for name, reference in expected.items():
        value = found[name]
        if tuple(value.shape) != tuple(reference.shape) or value.dtype.kind != _kind(reference):
            raise ArtifactError(
                f"{prefix}.{name} is {value.dtype} {tuple(value.shape)}, expected {tuple(reference.shape)}"
            )
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ArtifactError(f"{prefix}.{name} holds non-finite values")
        state[name] = torch.from_numpy(np.array(value)).to(reference.dtype)
    module.load_state_dict(state)


def _kind(tensor: torch.Tensor) -> str:
    return "f" if tensor.is_floating_point() else "i"


def scalar(tensors: dict[str, np.ndarray], name: str) -> float:
    """One finite number stored as a one-element tensor."""
    value = tensors.get(name)
    if value is None or value.size != 1 or value.dtype.kind not in "fi" or not np.isfinite(value).all():
        raise ArtifactError(f"{name} is missing or not one finite number")
    return float(value.reshape(-1)[0])
