"""SuperSimpleNet (Rolih et al., 2024): a feature adaptor, synthetic anomalies in feature space, a
segmentation head and an image classification head, on the frozen backbone's patch features.

Per class, on the engine's patch features (the backbone's stages upsampled to the finest one and
concatenated), plus one channel: the log distance of each patch to a k-NN memory bank of the
class's normal patches (``learned.KnnPrior``; the training images' own distances are taken leaving their
own patches out). The channels are standardised with the normal images' statistics, then

- a feature adaptor (1x1 convolution);
- in training, synthetic anomalies: Gaussian noise added to the adapted features inside binarised
  Perlin-noise masks (half of the masks emptied, so that untouched normals are seen too);
- a segmentation head (1x1 convolutions) -> one anomaly logit per grid cell: the anomaly map;
- a classification head (convolutions over the adapted features and the map, global max and mean
  pools of both, a linear layer) -> one logit per image: the image score.

Losses: truncated L1 and focal loss on the map, focal loss on the image logit. Labelled defects
(``FitContext.defects``) join the batches 1:1 with normal images; their masks are the map's target
there (no noise is added on a real defect), and a defect whose mask is empty counts by its image
label only. Deviations from the paper, chosen on validation data (docs/benchmarks.md): features
are per-channel standardised, so the noise's standard deviation is 1.0 in those units instead of
the paper's 0.015 for raw Wide-ResNet features; learning rates are five times the paper's for a
training budget of minutes on a CPU; the classification head reduces the channels with a 1x1
convolution before its 3x3 one; the k-NN prior channel is an addition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shared.engine.config import FitConfig, FitProgress
from shared.engine.scorers import learned
from shared.engine.scorers.base import ArtifactFiles, FitContext, PatchScores, ScoreInput
from shared.errors import ArtifactError

# "seg": max of the blurred map; "cls": the classification head's logit; "cls+knn": that logit and
# the k-NN prior's image score, each standardised on the training normals, summed
# (``learned.PriorFusion``; needs the prior, else "cls").
ImageRule = Literal["cls", "seg", "cls+knn"]


@dataclass(frozen=True)
class SSNSettings:
    """Training settings (defaults chosen on validation data, docs/benchmarks.md)."""

    hidden: int = 128  # segmentation head width
    dec_channels: int = 32  # classification head width
    noise_std: float = 1.0  # synthetic anomalies, in units of the standardised features
    perlin_threshold: float = 0.2  # normal-only: share of a mask above it becomes an anomaly
    perlin_threshold_labelled: float = 0.6  # with labelled defects (the paper's supervised value)
    empty_share: float = 0.5  # share of training samples whose synthetic mask is emptied
    epochs: int = 30
    batch: int = 16
    adaptor_lr: float = 5e-4
    head_lr: float = 1e-3
    weight_decay: float = 1e-5
    margin: float = 0.5  # truncated L1: normal logits below -margin, anomalous above +margin
    focal_gamma: float = 4.0
    clip_grad: float = 1.0  # with labelled defects
    negatives_per_defect: int = 4  # labelled: normal images drawn per defect each epoch
    flips: bool = False  # random horizontal/vertical flips of the feature maps (and masks)
    # labelled: share of the normal samples that get a labelled defect's masked cells pasted in at
    # a random place (flipped at random): real defect features in new positions and surroundings
    paste_share: float = 0.0
    knn_prior: bool = True
    image_rule: ImageRule = "seg"  # normal-only image score
    image_rule_labelled: ImageRule = "cls+knn"  # with labelled defects


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.xavier_normal_(module.weight)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.constant_(module.weight, 1.0)


class SSNNet(nn.Module):
    def __init__(self, channels: int, hidden: int, dec_channels: int, stop_grad: bool = False) -> None:
        super().__init__()
        self.adaptor = nn.Conv2d(channels, channels, 1)
        self.seg = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, 1, 1, bias=False),
        )
        # The paper's one 5x5 convolution over all channels costs far more on a CPU; a 1x1
        # reduction then a 3x3 convolution keeps a spatial context for the image decision.
        self.dec = nn.Sequential(
            nn.Conv2d(channels + 1, dec_channels, 1),
            nn.BatchNorm2d(dec_channels),
            nn.ReLU(),
            nn.Conv2d(dec_channels, dec_channels, 3, padding=1),
            nn.BatchNorm2d(dec_channels),
            nn.ReLU(),
        )
        self.fc = nn.Linear(2 * dec_channels + 2, 1)
        self.stop_grad = stop_grad  # normal-only: the image head does not push the map (paper)
        self.apply(_init)

    def heads(self, adapted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapted features ``(B, C, h, w)`` -> (map logits ``(B, h, w)``, image logits ``(B,)``)."""
        amap = self.seg(adapted)
        guide = amap.detach() if self.stop_grad else amap
        dec = self.dec(torch.cat([adapted, guide], 1))
        pooled = torch.cat([dec.amax((2, 3)), dec.mean((2, 3)), guide.amax((2, 3)), guide.mean((2, 3))], 1)
        return amap[:, 0], self.fc(pooled)[:, 0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.adaptor(x))


def perlin_noise(height: int, width: int, res: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Gradient (Perlin) noise on a ``height`` x ``width`` grid (multiples of ``res``), about -1..1."""
    ry, rx = res
    angles = 2 * math.pi * torch.rand(ry + 1, rx + 1, generator=generator)
    gradients = torch.stack([torch.cos(angles), torch.sin(angles)], -1)
    ys, xs = torch.arange(height) * (ry / height), torch.arange(width) * (rx / width)
    yi, xi = ys.floor().long(), xs.floor().long()
    fy, fx = (ys - yi)[:, None], (xs - xi)[None, :]

    def corner(oy: int, ox: int) -> torch.Tensor:
        g = gradients[yi[:, None] + oy, xi[None, :] + ox]
        return g[..., 0] * (fy - oy) + g[..., 1] * (fx - ox)

    def fade(t: torch.Tensor) -> torch.Tensor:
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    u, v = fade(fx), fade(fy)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return math.sqrt(2) * (top * (1 - v) + bottom * v)


def perlin_masks(
    count: int, grid: tuple[int, int], threshold: float, generator: torch.Generator
) -> torch.Tensor:
    """``count`` binarised Perlin masks ``(count, h, w)``, scales 2^0..2^5 per axis (as the paper)."""
    height, width = grid
    side_h, side_w = 1 << max(5, (height - 1).bit_length()), 1 << max(5, (width - 1).bit_length())
    out = torch.empty(count, height, width)
    for i in range(count):
        scales = torch.randint(0, 6, (2,), generator=generator)
        noise = perlin_noise(side_h, side_w, (1 << int(scales[0]), 1 << int(scales[1])), generator)
        resized = F.interpolate(noise[None, None], size=grid, mode="bilinear", align_corners=False)[0, 0]
        out[i] = (resized > threshold).float()
    return out


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    prob = torch.sigmoid(logits).clamp(1e-6, 1 - 1e-6)
    ce = F.binary_cross_entropy(prob, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    return (ce * (1 - p_t) ** gamma).mean()


@dataclass
class TrainingSet:
    """Standardised feature maps: normal images, and labelled defects with their grid masks."""

    normal: torch.Tensor  # (n, C, h, w)
    defects: torch.Tensor | None = None  # (m, C, h, w)
    masks: torch.Tensor | None = None  # (m, h, w) {0, 1}; an all-zero mask: location unknown


def train(
    data: TrainingSet,
    settings: SSNSettings,
    seed: int,
    progress: FitProgress | None = None,
) -> SSNNet:
    """Train the adaptor and both heads; returns the network in evaluation mode."""
    progress = progress or FitProgress()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    n_normal, channels, height, width = data.normal.shape
    labelled = data.defects is not None and len(data.defects) > 0
    net = SSNNet(channels, settings.hidden, settings.dec_channels, stop_grad=not labelled)
    threshold = settings.perlin_threshold_labelled if labelled else settings.perlin_threshold
    # A bank of masks drawn once: drawing per step would cost more than the heads themselves.
    mask_bank = perlin_masks(1024, (height, width), threshold, generator)
    heads = list(net.dec.parameters()) + list(net.fc.parameters())
    optimiser = torch.optim.AdamW(
        [
            {"params": net.adaptor.parameters(), "lr": settings.adaptor_lr, "weight_decay": 0.0},
            {"params": net.seg.parameters(), "lr": settings.head_lr},
            {"params": heads, "lr": settings.head_lr},
        ],
        weight_decay=settings.weight_decay,
    )
    epochs = settings.epochs
    schedule = torch.optim.lr_scheduler.MultiStepLR(
        optimiser, [int(epochs * 0.8), int(epochs * 0.9)], gamma=0.4
    )
    defects = data.defects if labelled else None
    n_defects = 0 if defects is None else len(defects)
    defect_masks = data.masks if data.masks is not None else torch.zeros(n_defects, height, width)
    located = defect_masks.flatten(1).any(1) if n_defects else torch.zeros(0, dtype=torch.bool)
    empty = torch.zeros(height, width)
    progress.stage("supersimplenet: training", epochs)
    for _ in range(epochs):
        net.train()
        if defects is not None:
            # Balanced epochs: every defect as often as the normal images drawn for it (1:1).
            n_draw = min(n_normal, settings.negatives_per_defect * n_defects)
            chosen = torch.randperm(n_normal, generator=generator)[: max(n_defects, n_draw)]
            repeats = max(1, len(chosen) // n_defects)
            items = [(False, int(i)) for i in chosen] + [(True, i) for i in range(n_defects)] * repeats
            items = [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]
        else:
            items = [(False, int(i)) for i in torch.randperm(n_normal, generator=generator)]
        for start in range(0, len(items), settings.batch):
            chunk = items[start : start + settings.batch]
            x = torch.stack(
                [
                    defects[i] if is_defect and defects is not None else data.normal[i]
                    for is_defect, i in chunk
                ]
            )
            mask = torch.stack([defect_masks[i] if is_defect else empty for is_defect, i in chunk])
            label = torch.tensor([1.0 if is_defect else 0.0 for is_defect, _ in chunk])
            known = torch.tensor([bool(located[i]) if is_defect else True for is_defect, i in chunk])
            if settings.flips:
                for dim in (-1, -2):
                    flip = torch.rand(len(x), generator=generator) < 0.5
                    x[flip] = x[flip].flip(dim)
                    mask[flip] = mask[flip].flip(dim)
            if defects is not None and settings.paste_share > 0 and located.any():
                sources = torch.nonzero(located).flatten()
                for row, (is_defect, _) in enumerate(chunk):
                    if is_defect or float(torch.rand(1, generator=generator)) >= settings.paste_share:
                        continue
                    pick = int(sources[torch.randint(len(sources), (1,), generator=generator)])
                    _paste(x[row], mask[row], defects[pick], defect_masks[pick], generator)
                    label[row] = 1.0
            loss = _step_loss(net, x, mask, label, known, mask_bank, settings, generator)
            optimiser.zero_grad()
            loss.backward()
            if labelled and settings.clip_grad:
                nn.utils.clip_grad_norm_(net.parameters(), settings.clip_grad)
            optimiser.step()
        schedule.step()
        progress.advance(1)
    return net.eval()


@torch.inference_mode()
def _image_logits(net: SSNNet, maps: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """The image logits ``(n,)`` of standardised maps ``(n, C, h, w)``, in chunks."""
    return torch.cat([net(maps[start : start + chunk])[1] for start in range(0, len(maps), chunk)])


def _paste(
    x: torch.Tensor,
    mask: torch.Tensor,
    defect: torch.Tensor,
    defect_mask: torch.Tensor,
    generator: torch.Generator,
) -> None:
    """Paste ``defect``'s masked cells into ``x`` (in place) at a random offset, flipped at random;
    ``mask`` becomes the pasted cells."""
    source, cells = defect, defect_mask
    for dim in (-1, -2):
        if float(torch.rand(1, generator=generator)) < 0.5:
            source, cells = source.flip(dim), cells.flip(dim)
    rows = torch.nonzero(cells.any(1)).flatten()
    cols = torch.nonzero(cells.any(0)).flatten()
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    height, width = cells.shape
    dy = int(torch.randint(height - (bottom - top) + 1, (1,), generator=generator)) - top
    dx = int(torch.randint(width - (right - left) + 1, (1,), generator=generator)) - left
    placed = torch.zeros_like(cells)
    placed[top + dy : bottom + dy, left + dx : right + dx] = cells[top:bottom, left:right]
    moved = torch.zeros_like(source)
    moved[:, top + dy : bottom + dy, left + dx : right + dx] = source[:, top:bottom, left:right]
    x.mul_(1 - placed).add_(moved * placed)
    mask.copy_(placed)


def _step_loss(
    net: SSNNet,
    x: torch.Tensor,
    mask: torch.Tensor,
    label: torch.Tensor,
    known: torch.Tensor,
    mask_bank: torch.Tensor,
    settings: SSNSettings,
    generator: torch.Generator,
) -> torch.Tensor:
    batch = len(x)
    adapted = net.adaptor(x)
    synthetic = mask_bank[torch.randint(len(mask_bank), (batch,), generator=generator)].clone()
    mirrored = torch.rand(batch, generator=generator) < 0.5
    synthetic[mirrored] = synthetic[mirrored].flip(-1)
    synthetic[torch.rand(batch, generator=generator) < settings.empty_share] = 0
    synthetic = synthetic * (1 - mask)  # no noise on top of a real defect...
    synthetic[(label > 0) & ~known] = 0  # ...nor anywhere on a defect whose location is unknown
    noise = torch.randn(adapted.shape, generator=generator) * settings.noise_std
    adapted = adapted + noise * synthetic[:, None]
    target = ((mask + synthetic) > 0).float()
    image_target = ((label + synthetic.flatten(1).amax(1)) > 0).float()
    amap, image_logit = net.heads(adapted)
    # The cells of a defect without a mask are of unknown state: they stay out of the map losses.
    counted = known[:, None, None].expand_as(target)
    normal_cells = counted & (target == 0)
    anomalous_cells = counted & (target > 0)
    loss = focal_loss(image_logit, image_target, settings.focal_gamma)
    if normal_cells.any():
        loss = loss + torch.clamp(amap[normal_cells] + settings.margin, min=0).mean()
    if anomalous_cells.any():
        loss = loss + torch.clamp(settings.margin - amap[anomalous_cells], min=0).mean()
    if counted.any():
        loss = loss + focal_loss(amap[counted], target[counted], settings.focal_gamma)
    return loss


class SuperSimpleNetScorer(learned.LearnedScorer[SSNSettings]):
    """The trained network, the feature statistics it standardises with, and its k-NN prior."""

    settings_type = SSNSettings

    def __init__(
        self,
        net: SSNNet,
        stats: learned.ChannelStats,
        prior: learned.KnnPrior | None,
        image_rule: ImageRule,
        n_labelled: int,
        fusion: learned.PriorFusion | None = None,
    ) -> None:
        if (image_rule == "cls+knn") != (fusion is not None and prior is not None):
            raise ArtifactError('supersimplenet: the "cls+knn" image rule needs its k-NN prior and fusion')
        self.net = net.eval()
        self.stats = stats
        self.prior = prior
        self.image_rule: ImageRule = image_rule
        self.n_labelled = n_labelled
        self.fusion = fusion

    @classmethod
    def pools_fold_scores(cls, config: FitConfig, labelled: bool) -> bool:
        """The fused image score (``cls+knn``) is standardised on each network's own training
        normals, so fold networks score on one scale; a raw logit or map maximum is not."""
        settings = cls.settings(config)
        return labelled and settings.knn_prior and settings.image_rule_labelled == "cls+knn"

    @classmethod
    def fit_with(cls, context: FitContext, settings: SSNSettings) -> Self:
        features = context.features
        prior: learned.KnnPrior | None = None
        normal = learned.to_maps(features, context.grid)
        defects = masks = None
        if settings.knn_prior:
            prior, own = learned.KnnPrior.fit(context, features)
            normal = torch.cat(
                [normal, learned.to_maps(learned.log_distance(own)[..., None], context.grid)], 1
            )
        if context.defects is not None and len(context.defects.features):
            defects = cls._with_prior(context.defects.features, context.grid, prior)
            masks = learned.masks_on_grid(context.defects.masks, context.grid)
        stats = learned.ChannelStats.of(normal)
        data = TrainingSet(
            stats.standardise(normal), None if defects is None else stats.standardise(defects), masks
        )
        del normal
        net = train(data, settings, context.seed, context.progress)
        n_labelled = 0 if defects is None else len(defects)
        rule = settings.image_rule_labelled if n_labelled else settings.image_rule
        fusion = None
        if rule == "cls+knn" and prior is None:
            rule = "cls"
        elif rule == "cls+knn":
            fusion = learned.PriorFusion.of(
                _image_logits(net, data.normal), learned.prior_image_scores(learned.log_distance(own))
            )
        return cls(net, stats, prior, rule, n_labelled, fusion)

    @staticmethod
    def _with_prior(
        features: np.ndarray, grid: tuple[int, int], prior: learned.KnnPrior | None
    ) -> torch.Tensor:
        """``(B, N, D)`` patch features -> ``(B, C, h, w)`` maps; with a prior, its log distance is
        the last channel."""
        maps = learned.to_maps(features, grid)
        if prior is None:
            return maps
        return torch.cat(
            [maps, learned.to_maps(learned.log_distance(prior.scores(features))[..., None], grid)], 1
        )

    @torch.inference_mode()
    def score(self, batch: ScoreInput) -> PatchScores:
        inputs = self._with_prior(batch.features, batch.grid, self.prior)
        amap, logits = self.net(self.stats.standardise(inputs))
        patch = amap.reshape(len(amap), -1).numpy().astype(np.float32)
        image: torch.Tensor | None = None
        if self.image_rule == "cls":
            image = logits
        elif self.fusion is not None:
            image = self.fusion.combine(logits, learned.prior_image_scores(inputs[:, -1]))
        return PatchScores(patch, batch.grid, None if image is None else image.numpy().astype(np.float64))

    def manifest_facts(self) -> dict[str, Any]:
        return {
            "bank_size": None if self.prior is None else self.prior.bank.size,
            "image_rule": self.image_rule,
            "labelled_defects": self.n_labelled,
        }

    def write(self, files: ArtifactFiles, key: str) -> None:
        prefix = f"supersimplenet_{key}"
        learned.weights_to_tensors(self.net, f"{prefix}.net", files.tensors)
        self.stats.write(files.tensors, prefix)
        files.tensors[f"{prefix}.hidden"] = np.array([self.net.seg[0].out_channels], dtype=np.int64)
        files.tensors[f"{prefix}.dec_channels"] = np.array([self.net.fc.in_features // 2 - 1], dtype=np.int64)
        # "cls+knn" models also answer 1 here: the stored fusion tells the two apart.
        files.tensors[f"{prefix}.image_rule_cls"] = np.array([self.image_rule != "seg"], dtype=np.int64)
        if self.fusion is not None:
            self.fusion.write(files.tensors, f"{prefix}.fusion")
        files.tensors[f"{prefix}.labelled_defects"] = np.array([self.n_labelled], dtype=np.int64)
        files.tensors[f"{prefix}.knn_prior"] = np.array([self.prior is not None], dtype=np.int64)
        if self.prior is not None:
            self.prior.write(files, f"{prefix}_prior.faiss")

    @classmethod
    def read(cls, files: ArtifactFiles, key: str, config: FitConfig) -> Self:
        prefix = f"supersimplenet_{key}"
        tensors = files.tensors
        stats = learned.ChannelStats.read(tensors, prefix)
        channels = stats.channels
        hidden = int(learned.scalar(tensors, f"{prefix}.hidden"))
        dec_channels = int(learned.scalar(tensors, f"{prefix}.dec_channels"))
        if not (0 < channels <= 1 << 16 and 0 < hidden <= 4096 and 0 < dec_channels <= 4096):
            raise ArtifactError(f"{prefix}: network sizes out of bounds")
        net = SSNNet(channels, hidden, dec_channels)
        learned.weights_from_tensors(net, f"{prefix}.net", tensors)
        prior = (
            learned.KnnPrior.read(files, f"{prefix}_prior.faiss")
            if learned.scalar(tensors, f"{prefix}.knn_prior")
            else None
        )
        fusion = learned.PriorFusion.read(tensors, f"{prefix}.fusion")
        rule: ImageRule = "cls" if learned.scalar(tensors, f"{prefix}.image_rule_cls") else "seg"
        if fusion is not None:
            if rule != "cls":
                raise ArtifactError(f"{prefix}: a score fusion is stored for the map's image rule")
            rule = "cls+knn"
        n_labelled = int(learned.scalar(tensors, f"{prefix}.labelled_defects"))
        return cls(net, stats, prior, rule, n_labelled, fusion)
