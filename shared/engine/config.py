"""The engine's vocabulary, importable without torch: decisions, results, regions, fit settings.

Everything that describes a model or a result but does no computation lives here, so that the
CLI, the services and the message schemas can name these types without loading torch or faiss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, get_args

import numpy as np

from shared.engine.scorers import registry
from shared.errors import ConfigError
from shared.limits import CLASS_NAME_MAX

UNKNOWN = "unknown"  # the product class of a frame that matches no class of the model


class Decision(StrEnum):
    """What the line does with a part. The one decision type of engine, scorer, alerts and PLC."""

    PASS = "pass"
    REJECT = "reject"
    REVIEW = "review"  # a person decides (unknown product, hint mismatch, untrusted score)
    ERROR = "error"  # the part could not be scored (model failure); the PLC treats it as reject

    @property
    def is_defect(self) -> bool:
        """Rejects and reviews carry evidence to the explainer (a defect event)."""
        return self in (Decision.REJECT, Decision.REVIEW)


DECISIONS: tuple[str, ...] = tuple(d.value for d in Decision)

SCORER_KINDS: tuple[str, ...] = registry.SCORER_NAMES  # the scorer registry's names
IndexKind = Literal["flat", "pca-refine", "hnsw", "ivf"]
INDEX_KINDS: tuple[str, ...] = get_args(IndexKind)
# max: the map's maximum; top1: the mean of its top 1%; excess: the maximum of the map taken relative
# to the image's own mean patch score (the map is centred the same way; see class_model).
ImageScoreMode = Literal["max", "top1", "excess"]
IMAGE_SCORE_MODES: tuple[str, ...] = get_args(ImageScoreMode)
# The image score of a few-shot fit unless one is asked for (`lineguard fit --shots`): on validation
# (training images, `benchmarks.fewshot select`, 16 shots) excess 0.821 vs max 0.797 image AUROC
# (docs/benchmarks.md, "Few-shot").
FEW_SHOT_IMAGE_SCORE: ImageScoreMode = "excess"
# The anomaly map's blur of a few-shot fit unless one is asked for: the plain fit's 8 was chosen on
# real defects with all normal images; with 16 shots validation prefers 4 (0.870 vs 0.865 image AUROC,
# `benchmarks.fewshot select`, docs/benchmarks.md "Few-shot").
FEW_SHOT_BLUR_SIGMA = 4.0

_CLASS_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def is_valid_class_name(name: str) -> bool:
    """Class names become file names and metric labels: 1-64 of ``[A-Za-z0-9._-]``, no leading dot,
    and never the reserved ``unknown``."""
    return (
        0 < len(name) <= CLASS_NAME_MAX
        and set(name) <= _CLASS_NAME_CHARS
        and name != UNKNOWN
        and not name.startswith(".")
    )


@dataclass(frozen=True)
class Region:
    """An anomalous region of one image, in that image's pixel coordinates."""

    x: int
    y: int
    width: int
    height: int
    score: float  # the region's peak normalised score (0.5 = the class threshold)
    area_fraction: float  # the region's share of the image


@dataclass
class ScoreResult:
    """The engine's answer for one image."""

    product_class: str  # routed (or hinted) class, or UNKNOWN
    route_confidence: float
    hint_mismatch: bool
    raw_score: float
    score: float  # normalised: the class threshold maps to 0.5
    threshold: float  # on the raw scale
    decision: Decision
    reason: str
    regions: list[Region]  # in the frame's pixel coordinates
    anomaly_map: np.ndarray  # HxW float32, normalised, in the resolution of the image as scored
    # S x S float32 at model-input resolution, on the raw (unclipped) scale: what pixel metrics rank.
    raw_map: np.ndarray | None = None


@dataclass
class FitConfig:
    """Everything that shapes a model; stored in the manifest."""

    backbone: str = "efficientnet_lite0"
    weights: str | None = None  # weight file; None: the backbone's default local source
    input_size: int = 224
    layers: tuple[int, ...] | None = None  # None: the backbone's default
    vit_combine: Literal["mean", "concat"] = "mean"
    feature_dim: int | None = None
    arch_overrides: dict[str, Any] = field(default_factory=dict)
    scorer: str = "knn"  # a name in shared.engine.scorers.registry
    k: int = 1
    index: IndexKind = "flat"
    reduced_dims: int = 128  # pca-refine: dimensions of the candidate search
    refine_factor: int = 8  # pca-refine: candidates per neighbour re-ranked exactly
    bank_size: int = 10_000  # coreset target per class
    bank_ratio: float | None = None  # if set: coreset = ratio * patches (overrides bank_size)
    projection_dim: int = 128
    image_score: ImageScoreMode = "max"
    # Chosen on real-defect validation (docs/benchmarks.md, "Choosing the map blur and the stages").
    blur_sigma: float = 8.0
    holdout_fraction: float = 0.2  # calibration_folds 1: the share of normal images held out
    min_holdout: int = 3
    target_frr: float = 0.01
    # The threshold's normal scores: out-of-fold over all normal images, each scored by a scorer
    # fitted on the other folds (K fits more; docs/benchmarks.md). 1: one held-out share instead.
    # Learned scorers pool their K fold networks' scores only where these share one scale
    # (labelled SuperSimpleNet); the others keep one held-out share whatever K is.
    calibration_folds: int = 5
    # Refit the bank on all normal images after calibrating on the held-out share (one more coreset):
    # on magnetic tile this took image AUROC from 0.959 to 0.968 (docs/benchmarks.md).
    bank_from_all_normals: bool = True
    unknown_factor: float = 3.0  # unknown beyond factor x the largest held-out routing distance...
    unknown_min_distance: float = 0.05  # ...but never closer than this cosine distance
    batch_size: int = 8
    seed: int = 0
    # Few-shot fitting (shared.engine.fewshot, `lineguard fit --shots K`): the views of each shot in
    # the bank, and how many confirmed normal images end the review-only cold start.
    shot_flips: Literal["none", "horizontal", "both"] = "both"
    shot_gain_max: float = 2.0  # exposure gains from 1/max to max...
    shot_gain_steps: int = 5  # ...in this many log-spaced steps (1: no exposure views)
    # The few-shot bank: as many views of each shot as fit in this many patches, every patch kept
    # and searched exactly (no coreset); a coreset of bank_size only if the shots alone overflow it.
    # 0: every view and a coreset (slow: 16 shots x 20 views are 250k patches). 16k: at 16 shots on
    # validation as good as 32k or 64k (more views), and the cheapest search. docs/benchmarks.md.
    shot_bank_patches: int = 16_384
    review_until_confirmed: int = 50
    # WinCLIP (scorer "winclip"): CLIP is its own backbone, read from a local open_clip checkpoint.
    clip_model: str = "ViT-B-16-plus-240"  # an open_clip built-in ViT configuration
    clip_weights: str | None = None  # the checkpoint file (fitting); loading finds it by its sha256
    clip_overrides: dict[str, Any] = field(default_factory=dict)  # bounded sizes (small test models)
    clip_object: str | None = None  # the object named in the prompts; None: the class name in words
    winclip_scales: tuple[int, ...] = (2, 3)  # window sizes in patches (the paper's small and mid)
    winclip_few_shot: bool = True  # WinCLIP+: the normal images become a visual memory
    epochs: int | None = None  # learned scorers (supersimplenet, uninet): None = the scorer's default

    def __post_init__(self) -> None:
        if self.layers is not None:
            self.layers = tuple(int(layer) for layer in self.layers)
        if self.k < 1:
            raise ConfigError("k must be at least 1")
        if self.index not in INDEX_KINDS:
            raise ConfigError(f"unknown index {self.index!r}; choose one of {', '.join(INDEX_KINDS)}")
        if self.reduced_dims < 1 or self.refine_factor < 1:
            raise ConfigError("reduced_dims and refine_factor must be at least 1")
        if self.scorer not in registry.SCORERS:
            raise ConfigError(f"unknown scorer {self.scorer!r}; choose one of {', '.join(registry.SCORERS)}")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError("holdout_fraction must be between 0 and 1")
        if not 0 < self.target_frr < 1:
            raise ConfigError("target_frr must be between 0 and 1")
        if self.shot_gain_max < 1.0 or self.shot_gain_steps < 1 or self.review_until_confirmed < 0:
            raise ConfigError("shot_gain_max >= 1, shot_gain_steps >= 1 and review_until_confirmed >= 0")
        if self.shot_bank_patches < 0:
            raise ConfigError("shot_bank_patches must be 0 (no budget) or more")
        self.winclip_scales = tuple(int(size) for size in self.winclip_scales)
        if not self.winclip_scales or any(size < 1 for size in self.winclip_scales):
            raise ConfigError("winclip_scales must be one or more positive window sizes")
        if self.calibration_folds < 1:
            raise ConfigError("calibration_folds must be at least 1")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError("epochs must be at least 1")


RuntimeName = Literal["torch", "openvino", "onnx"]
RUNTIMES: tuple[str, ...] = get_args(RuntimeName)
# "auto": OpenVINO when the model carries a backbone export (the fastest measured on CPUs,
# docs/benchmarks.md), torch otherwise and always on a GPU.
RuntimeChoice = Literal["auto", "torch", "openvino", "onnx"]
RUNTIME_CHOICES: tuple[str, ...] = get_args(RuntimeChoice)
Device = Literal["cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(Device)
# "auto": bf16 where the hardware computes it natively (CPUs with AVX512-BF16 or AMX, CUDA GPUs
# with bf16), fp32 elsewhere; emulated bf16 is several times slower than fp32.
Precision = Literal["fp32", "bf16", "auto"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass(frozen=True)
class RuntimeOptions:
    """How the backbone runs: which runtime, on which device, in which precision, with how many
    threads per call and how many concurrent callers (the scorer's model workers)."""

    runtime: RuntimeChoice = "torch"
    device: Device = "cpu"
    precision: Precision = "fp32"
    # Named as the scorer's settings name them (``ScorerSettings``), which fill them by name.
    torch_threads: int | None = None  # intra-op threads per call, whatever the runtime; None: torch's
    model_workers: int = 1  # callers at once (OpenVINO gets one stream each)
    channels_last: bool = True  # torch CNNs on CPU: NHWC convolutions (faster; off = the NCHW path)

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIME_CHOICES:
            raise ConfigError(f"unknown runtime {self.runtime!r}; choose one of {', '.join(RUNTIME_CHOICES)}")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.device == "cuda" and self.runtime not in ("auto", "torch"):
            raise ConfigError(f"the {self.runtime} runtime runs on the CPU only; on cuda use torch")
        if (self.torch_threads is not None and self.torch_threads < 1) or self.model_workers < 1:
            raise ConfigError("torch_threads and model_workers must be at least 1")


class FitProgress:
    """Progress hooks for fitting; the CLI draws bars with them. The default does nothing."""

    def stage(self, name: str, total: int) -> None:
        """A new stage with ``total`` units of work begins."""

    def advance(self, amount: int = 1) -> None:
        """``amount`` units of the current stage are done."""
