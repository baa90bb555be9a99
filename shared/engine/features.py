"""Patch features from a frozen backbone: one feature vector per cell of a regular grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from shared.engine.backbones import BackboneSpec, WeightBytes, build_timm_model, get_spec
from shared.engine.config import FitConfig


@dataclass(frozen=True)
class FeatureConfig:
    layers: tuple[int, ...]
    input_size: int = 224
    vit_combine: Literal["mean", "concat"] = "mean"
    feature_dim: int | None = None  # CNN: reduce the concatenated channels by adaptive pooling
    arch_overrides: dict[str, Any] = field(default_factory=dict)


class FeatureExtractor:
    """Images -> ``(B, h*w, D)`` float32 patch features and the ``(h, w)`` grid."""

    def __init__(self, spec: BackboneSpec, config: FeatureConfig, weights_path: Any) -> None:
        self.spec = spec
        self.config = config
        self.model = build_timm_model(spec, config.input_size, weights_path, config.arch_overrides)
        self._mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        """Resize each ``HxWx3 uint8`` image to the input size (antialiased) and normalise."""
        size = self.config.input_size
        batch = np.empty((len(images), size, size, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            if image.shape[0] == size and image.shape[1] == size:
                batch[i] = image
            else:
                batch[i] = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
        tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
        return (tensor - self._mean) / self._std

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> tuple[torch.Tensor, tuple[int, int]]:
        return self.extract(self.preprocess(images))

    @torch.inference_mode()
    def extract(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        layers = list(self.config.layers)
        maps = self.model.forward_intermediates(
            pixels, indices=layers, intermediates_only=True, stop_early=True, **self._norm_kwargs()
        )
        if self.spec.kind == "vit":
            if self.config.vit_combine == "mean":
                combined = torch.stack(maps).mean(dim=0)
            else:
                combined = torch.cat(maps, dim=1)
        else:
            combined = self._aggregate_cnn(maps)
        batch, channels, height, width = combined.shape
        features = combined.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        return features.float().contiguous(), (height, width)

    def _norm_kwargs(self) -> dict[str, Any]:
        # ViT intermediate tokens get the final LayerNorm so blocks of different depth are comparable.
        return {"norm": True} if self.spec.kind == "vit" else {}

    def _aggregate_cnn(self, maps: list[torch.Tensor]) -> torch.Tensor:
        # PatchCore's local neighbourhood aggregation: each cell sees its 3x3 surroundings. Zero
        # padding counts (as in PatchCore): border cells then differ from interior ones, and on the
        # magnetic tile data this alone moves image AUROC from 0.77 to 0.90 (random 20k bank).
        target = maps[0].shape[-2:]
        pooled = []
        for feature_map in maps:
            local = F.avg_pool2d(feature_map, 3, stride=1, padding=1, count_include_pad=True)
            if local.shape[-2:] != target:
                local = F.interpolate(local, size=target, mode="bilinear", align_corners=False)
            pooled.append(local)
        combined = torch.cat(pooled, dim=1)
        if self.config.feature_dim and self.config.feature_dim < combined.shape[1]:
            batch, channels, height, width = combined.shape
            flat = combined.permute(0, 2, 3, 1).reshape(-1, 1, channels)
            reduced = F.adaptive_avg_pool1d(flat, self.config.feature_dim)
            combined = reduced.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        return combined


def make_extractor(config: FitConfig, weights_path: Path | WeightBytes | None) -> FeatureExtractor:
    """The feature extractor a model's settings describe (``weights_path`` None: random weights;
    ``WeightBytes``: a weight file already read and verified)."""
    spec = get_spec(config.backbone)
    feature_config = FeatureConfig(
        layers=config.layers or spec.default_layers,
        input_size=config.input_size,
        vit_combine=config.vit_combine,
        feature_dim=config.feature_dim,
        arch_overrides=dict(config.arch_overrides),
    )
    return FeatureExtractor(spec, feature_config, weights_path)
