"""UniNet (Wei et al., CVPR 2025): contrastive student-teacher learning with domain-related feature
selection, on the frozen backbone's patch features.

Faithful parts, on the engine's patch features (standardised per channel):

- two teachers: the *source* teacher is the frozen features, the *target* teacher a learnable copy
  (here one 1x1 convolution per scale, initialised to the identity and trained with a small
  learning rate, where the paper fine-tunes a whole backbone copy); each gives three scales;
- a bottleneck fuses the three scales of both teachers (as one double batch) into one embedding
  at the coarsest scale; a student decoder reconstructs the three scales from it;
- the pairs are crossed: the student of the target teacher's input is compared with the source
  teacher, the student of the source teacher's input with the target teacher (6 pairs);
- domain-related feature selection in training: student features weighted per channel by the
  spatial softmax of the teacher's, times (a learnable theta + the teacher's global mean);
- the loss per pair: lambda x (1 - cosine) + (1 - lambda) x InfoNCE over positions (a student
  position against every teacher position of its image, temperature T) + margin terms; with
  labelled defects, positions inside a defect's mask are pushed away from the teacher instead,
  and an image head on the student's pooled features learns the labels (cross-entropy);
- the anomaly map: the sum over pairs of 1 - cos(teacher, student), upsampled to the finest
  grid; the image score: the weighted decision mechanism (the mean of the top share of the
  blurred map, the share set per image by the pairs whose maxima stand out).

CPU-affordable deviations (validated, docs/benchmarks.md): the three scales are the engine's
patch feature map and its 2x and 4x average-pooled versions (the engine hands scorers one grid of
concatenated backbone stages); the networks are small; the InfoNCE of the finest scale runs on
2x-pooled positions (784 x 784 similarities per image were the single largest cost); the
temperature is lower than the paper's 2.0, which over 784 positions gives an almost uniform
softmax and no learning signal; training runs on the cached features for more epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shared.engine.config import FitConfig, FitProgress
from shared.engine.postprocess import anomaly_maps
from shared.engine.scorers import learned
from shared.engine.scorers.base import ArtifactFiles, FitContext, PatchScores, ScoreInput
from shared.errors import ArtifactError

SCALES = 3
_CONTRAST_MAX_POSITIONS = 256  # the InfoNCE of a finer scale runs on 2x-pooled positions


@dataclass(frozen=True)
class UniNetSettings:
    """Training settings (defaults chosen on validation data, docs/benchmarks.md)."""

    embed: int = 128  # bottleneck channels
    width: int = 64  # student and bottleneck convolution width
    epochs: int = 40
    batch: int = 16
    student_lr: float = 2e-3
    target_lr: float = 1e-5
    weight_decay: float = 1e-5
    temperature: float = 0.1
    lam: float = 0.7  # weight of the cosine term against the InfoNCE term
    margin: float = 1.0
    defect_margin: float = 0.5  # labelled: cosine similarity allowed inside a defect's mask
    alpha: float = 0.01  # weighted decision mechanism: share of the map = mean stand-out max x alpha...
    beta: float = 3e-5  # ...but at least beta
    defects_share: float = 0.25  # labelled: share of each epoch's samples that are defects


def pyramid(x: torch.Tensor) -> list[torch.Tensor]:
    """A feature map and its 2x and 4x average-pooled versions (the three scales)."""
    out = [x]
    for _ in range(SCALES - 1):
        out.append(F.avg_pool2d(out[-1], 2, ceil_mode=True))
    return out


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class Bottleneck(nn.Module):
    """The three scales -> one embedding on the coarsest grid (one-class embedding, as RD4AD)."""

    def __init__(self, channels: int, embed: int, width: int) -> None:
        super().__init__()
        self.down = nn.ModuleList(
            [
                nn.Sequential(
                    _conv(channels, width, 1), _conv(width, width, 3, 2), _conv(width, width, 3, 2)
                ),
                nn.Sequential(_conv(channels, width, 1), _conv(width, width, 3, 2)),
                _conv(channels, width, 1),
            ]
        )
        self.fuse = nn.Sequential(_conv(3 * width, embed, 1), _conv(embed, embed, 3))

    def forward(self, scales: list[torch.Tensor]) -> torch.Tensor:
        size = scales[-1].shape[-2:]
        parts = [
            F.interpolate(down(x), size=size, mode="bilinear", align_corners=False)
            for down, x in zip(self.down, scales, strict=True)
        ]
        return self.fuse(torch.cat(parts, 1))


class Student(nn.Module):
    """Decoder: the embedding -> the coarsest scale, then each finer one (upsampling).

    The finest scale has 1x1 convolutions only (its spatial context comes from the coarser ones):
    a 3x3 convolution there was the largest cost of a training step on a CPU."""

    def __init__(self, channels: int, embed: int, width: int) -> None:
        super().__init__()
        coarse = [
            nn.Sequential(_conv(cin, width, 1), _conv(width, width, 3), nn.Conv2d(width, channels, 1))
            for cin in (embed, channels)
        ]
        finest = nn.Sequential(_conv(channels, width, 1), nn.Conv2d(width, channels, 1))
        self.stages = nn.ModuleList([*coarse, finest])

    def forward(self, z: torch.Tensor, sizes: list[torch.Size]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        x = z
        for stage, size in zip(self.stages, reversed(sizes), strict=True):
            x = stage(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
            out.append(x)
            x = F.relu(x)
        return out[::-1]  # finest first


class UniNetNet(nn.Module):
    def __init__(self, channels: int, embed: int, width: int) -> None:
        super().__init__()
        convs = [nn.Conv2d(channels, channels, 1) for _ in range(SCALES)]
        with torch.no_grad():  # the target teacher starts as the source teacher
            for conv in convs:
                conv.weight.copy_(torch.eye(channels)[:, :, None, None])
                conv.bias.zero_()  # type: ignore[union-attr]
        self.target = nn.ModuleList(convs)
        self.embed, self.width = embed, width
        self.bottleneck = Bottleneck(channels, embed, width)
        self.student = Student(channels, embed, width)
        self.theta = nn.Parameter(torch.zeros(SCALES, channels))
        self.head = nn.Linear(channels, 1)  # labelled: image logit from the student's pooled features

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Standardised features ``(B, C, h, w)`` -> (6 teacher maps, the 6 students paired with them)."""
        source = pyramid(x)
        target = [conv(s) for conv, s in zip(self.target, source, strict=True)]
        both = [torch.cat([t, s], 0) for t, s in zip(target, source, strict=True)]
        students = self.student(self.bottleneck(both), [s.shape[-2:] for s in source])
        batch = len(x)
        of_target = [s[:batch] for s in students]  # compared with the source teacher
        of_source = [s[batch:] for s in students]  # compared with the target teacher
        return source + target, of_target + of_source

    def select(self, students: list[torch.Tensor], teachers: list[torch.Tensor]) -> list[torch.Tensor]:
        """Domain-related feature selection (training only)."""
        out = []
        for i, (student, teacher) in enumerate(zip(students, teachers, strict=True)):
            theta = torch.clamp(torch.sigmoid(self.theta[i % SCALES]) + 0.5, max=1.0)[None, :, None, None]
            weights = F.softmax(teacher.flatten(2), -1).reshape(teacher.shape)  # per channel, over positions
            out.append(student * weights * (theta + teacher.mean((2, 3), keepdim=True)))
        return out


def pair_loss(
    teacher: torch.Tensor, student: torch.Tensor, defect: torch.Tensor | None, settings: UniNetSettings
) -> torch.Tensor:
    """One teacher-student pair; ``defect``: ``(B, h, w)`` bool of cells inside a labelled defect."""
    h, w = student.shape[-2:]
    s, t = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    cos = (s * t).sum(1)  # (b, h, w)
    normal = torch.ones_like(cos, dtype=torch.bool) if defect is None else ~defect
    contrast_normal = normal
    if h * w > _CONTRAST_MAX_POSITIONS:  # fewer positions: 2x average pooling of both
        s = F.normalize(F.avg_pool2d(s, 2, ceil_mode=True), dim=1)
        t = F.normalize(F.avg_pool2d(t, 2, ceil_mode=True), dim=1)
        contrast_normal = -F.max_pool2d(-normal[:, None].float(), 2, ceil_mode=True)[:, 0] > 0.5
    logits = s.flatten(2).transpose(1, 2) @ t.flatten(2) / settings.temperature  # (b, n, n)
    # log of the softmax's diagonal: a student position's probability of matching its own teacher position
    log_diagonal = torch.diagonal(logits, dim1=1, dim2=2) - torch.logsumexp(logits, -1)
    keep = contrast_normal.flatten(1)
    loss = cos.new_zeros(())
    if normal.any():
        loss = loss + settings.lam * (1 - cos[normal]).mean()
    if keep.any():
        info_nce = -log_diagonal[keep].mean()
        margin = F.relu(settings.margin - log_diagonal[keep].exp()).mean()
        loss = loss + (1 - settings.lam) * info_nce + margin
    if defect is not None and defect.any():
        loss = loss + F.relu(cos[defect] - settings.defect_margin).mean()
    return loss


@dataclass
class TrainingSet:
    normal: torch.Tensor  # (n, C, h, w) standardised
    defects: torch.Tensor | None = None  # (m, C, h, w)
    masks: torch.Tensor | None = None  # (m, h, w) {0, 1}; all zero: location unknown


def train(
    data: TrainingSet, settings: UniNetSettings, seed: int, progress: FitProgress | None = None
) -> UniNetNet:
    progress = progress or FitProgress()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    n_normal, channels, height, width = data.normal.shape
    net = UniNetNet(channels, settings.embed, settings.width)
    student_params = [p for name, p in net.named_parameters() if not name.startswith("target.")]
    optimiser = torch.optim.AdamW(
        [
            {"params": student_params, "lr": settings.student_lr},
            {"params": net.target.parameters(), "lr": settings.target_lr},
        ],
        weight_decay=settings.weight_decay,
    )
    steps_per_epoch = -(-n_normal // settings.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser,
        max_lr=[settings.student_lr, settings.target_lr],
        total_steps=settings.epochs * steps_per_epoch,
        pct_start=0.1,
    )
    defects = data.defects if data.defects is not None and len(data.defects) else None
    n_defects = 0 if defects is None else len(defects)
    masks = data.masks if data.masks is not None else torch.zeros(n_defects, height, width)
    located = masks.flatten(1).any(1) if n_defects else torch.zeros(0, dtype=torch.bool)
    per_batch_defects = round(settings.batch * settings.defects_share) if n_defects else 0
    progress.stage("uninet: training", settings.epochs)
    for _ in range(settings.epochs):
        net.train()
        order = torch.randperm(n_normal, generator=generator)
        for step in range(steps_per_epoch):
            rows = order[step * settings.batch : (step + 1) * settings.batch]
            x = data.normal[rows]
            cell_defect = torch.zeros(len(rows), height, width, dtype=torch.bool)
            label = torch.zeros(len(rows))
            if defects is not None and per_batch_defects:
                picks = torch.randint(n_defects, (per_batch_defects,), generator=generator)
                x = torch.cat([x, defects[picks]])
                # A defect without a mask: every cell counts as defective for the push-away term.
                where = torch.where(
                    located[picks][:, None, None], masks[picks] > 0, torch.ones_like(masks[picks]) > 0
                )
                cell_defect = torch.cat([cell_defect, where])
                label = torch.cat([label, torch.ones(per_batch_defects)])
            loss = _step_loss(net, x, cell_defect if defects is not None else None, label, settings)
            optimiser.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            optimiser.step()
            schedule.step()
        progress.advance(1)
    return net.eval()


def _step_loss(
    net: UniNetNet,
    x: torch.Tensor,
    cell_defect: torch.Tensor | None,
    label: torch.Tensor,
    settings: UniNetSettings,
) -> torch.Tensor:
    teachers, students = net(x)
    selected = net.select(students, teachers)
    loss = x.new_zeros(())
    for teacher, student in zip(teachers, selected, strict=True):
        defect = None
        if cell_defect is not None:
            grid = teacher.shape[-2:]
            defect = F.adaptive_max_pool2d(cell_defect[:, None].float(), grid)[:, 0] > 0
        loss = loss + pair_loss(teacher, student, defect, settings)
    if cell_defect is not None:
        pooled = torch.cat([students[0], students[SCALES]]).mean((2, 3))
        logits = net.head(pooled)[:, 0]
        loss = loss + F.binary_cross_entropy_with_logits(logits, torch.cat([label, label]))
    return loss


class UniNetScorer(learned.LearnedScorer[UniNetSettings]):
    """The trained teacher-student pair and the feature statistics it standardises with."""

    settings_type = UniNetSettings

    def __init__(
        self,
        net: UniNetNet,
        stats: learned.ChannelStats,
        settings: UniNetSettings,
        config: FitConfig,
        n_labelled: int,
    ) -> None:
        self.net = net.eval()
        self.stats = stats
        self.alpha, self.beta = settings.alpha, settings.beta
        self.input_size, self.blur_sigma = config.input_size, config.blur_sigma
        self.n_labelled = n_labelled

    @classmethod
    def fit_with(cls, context: FitContext, settings: UniNetSettings) -> Self:
        normal = learned.to_maps(context.features, context.grid)
        stats = learned.ChannelStats.of(normal)
        defects = masks = None
        if context.defects is not None and len(context.defects.features):
            defects = stats.standardise(learned.to_maps(context.defects.features, context.grid))
            masks = learned.masks_on_grid(context.defects.masks, context.grid)
        net = train(
            TrainingSet(stats.standardise(normal), defects, masks), settings, context.seed, context.progress
        )
        n_labelled = 0 if defects is None else len(defects)
        return cls(net, stats, settings, context.config, n_labelled)

    @torch.inference_mode()
    def pair_maps(self, features: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
        """``(B, N, D)`` -> ``(6, B, h, w)``: 1 - cos(teacher, student) of each pair on the finest grid."""
        x = self.stats.standardise(learned.to_maps(features, grid))
        teachers, students = self.net(x)
        maps = [
            F.interpolate(
                (1 - F.cosine_similarity(t, s, dim=1))[:, None],
                size=grid,
                mode="bilinear",
                align_corners=False,
            )[:, 0]
            for t, s in zip(teachers, students, strict=True)
        ]
        return torch.stack(maps)

    def score(self, batch: ScoreInput) -> PatchScores:
        pairs = self.pair_maps(batch.features, batch.grid)
        patch = pairs.sum(0).reshape(pairs.shape[1], -1).numpy().astype(np.float32)
        return PatchScores(patch, batch.grid, self.decide(pairs, patch, batch.grid))

    def decide(self, pairs: torch.Tensor, patch: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        """The weighted decision mechanism: per image, the pairs whose maxima stand out (softmax over
        the pairs' maxima above its mean) set the share of the blurred map whose mean is the score."""
        blurred = anomaly_maps(patch, grid, self.input_size, self.blur_sigma).reshape(len(patch), -1)
        maxima = pairs.flatten(2).amax(2).T  # (B, 6)
        probs = F.softmax(maxima, 1)
        scores = np.empty(len(patch), dtype=np.float64)
        for i in range(len(patch)):
            standing_out = maxima[i][probs[i] > probs[i].mean()]
            share = float(standing_out.mean()) * self.alpha if len(standing_out) else 0.0
            count = max(1, int(blurred.shape[1] * max(share, self.beta)))
            scores[i] = float(np.partition(blurred[i], -count)[-count:].mean())
        return scores

    def manifest_facts(self) -> dict[str, Any]:
        return {"bank_size": None, "labelled_defects": self.n_labelled}

    def write(self, files: ArtifactFiles, key: str) -> None:
        prefix = f"uninet_{key}"
        learned.weights_to_tensors(self.net, f"{prefix}.net", files.tensors)
        self.stats.write(files.tensors, prefix)
        files.tensors[f"{prefix}.embed"] = np.array([self.net.embed], dtype=np.int64)
        files.tensors[f"{prefix}.width"] = np.array([self.net.width], dtype=np.int64)
        files.tensors[f"{prefix}.alpha_beta"] = np.array([self.alpha, self.beta], dtype=np.float64)
        files.tensors[f"{prefix}.labelled_defects"] = np.array([self.n_labelled], dtype=np.int64)

    @classmethod
    def read(cls, files: ArtifactFiles, key: str, config: FitConfig) -> Self:
        prefix = f"uninet_{key}"
        tensors = files.tensors
        stats = learned.ChannelStats.read(tensors, prefix)
        embed = int(learned.scalar(tensors, f"{prefix}.embed"))
        width = int(learned.scalar(tensors, f"{prefix}.width"))
        if not (0 < stats.channels <= 1 << 16 and 0 < embed <= 4096 and 0 < width <= 4096):
            raise ArtifactError(f"{prefix}: network sizes out of bounds")
        alpha_beta = tensors.get(f"{prefix}.alpha_beta")
        if alpha_beta is None or alpha_beta.shape != (2,) or not np.isfinite(alpha_beta).all():
            raise ArtifactError(f"{prefix}: alpha_beta missing or not two finite numbers")
        if not (0 < alpha_beta[0] <= 1 and 0 < alpha_beta[1] <= 1):
            raise ArtifactError(f"{prefix}: alpha and beta must lie in (0, 1]")
        net = UniNetNet(stats.channels, embed, width)
        learned.weights_from_tensors(net, f"{prefix}.net", tensors)
        settings = UniNetSettings(
            embed=embed, width=width, alpha=float(alpha_beta[0]), beta=float(alpha_beta[1])
        )
        return cls(
            net, stats, settings, config, int(learned.scalar(tensors, f"{prefix}.labelled_defects"))
        )
