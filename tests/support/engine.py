"""Engine test data: synthetic product images and a small random ViT saved like a real checkpoint.

Sizes are small so that the whole engine suite stays within a few minutes on two busy cores.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.engine.config import FitConfig
from shared.synthetic import render_sample

VIT_ARCH = {"embed_dim": 96, "depth": 2, "num_heads": 3}
VIT_SIZE = 168
FITTED_CLASSES = ("fabric", "washer", "pcb")


def save_tiny_vit(path: Path, *, original_format: bool = False, seed: int = 0) -> Path:
    """A randomly initialised small DINOv2-style ViT, saved as timm safetensors or as an original .pth."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, **VIT_ARCH)  # 518 px grid
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    if original_format:  # the facebookresearch checkpoint layout: an extra mask token, pickle-free .pth
        state["mask_token"] = torch.zeros(1, VIT_ARCH["embed_dim"])
        torch.save(state, path)
    else:
        save_file(state, str(path))
    return path


def tiny_vit_config(weights: Path, **changes: Any) -> FitConfig:
    """A fit of the small ViT saved by ``save_tiny_vit`` at ``weights`` (a 1000-patch bank per class)."""
    config = FitConfig(
        backbone="dinov2_vits14",
        weights=str(weights),
        arch_overrides=dict(VIT_ARCH),
        layers=(0, 1),
        input_size=VIT_SIZE,
        bank_size=1000,
    )
    return replace(config, **changes)


def synthetic_split(
    products: tuple[str, ...], n_train: int, size: int, seed: int = 0
) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {product: [render_sample(product, rng, size)[0] for _ in range(n_train)] for product in products}


def synthetic_test(product: str, size: int, n_good: int, n_per_defect: int, seed: int = 1):
    """``(images, labels, masks)`` of good and defective test images."""
    rng = np.random.default_rng(seed)
    images, labels, masks = [], [], []
    for defect in [None] * n_good + ["scratch", "spot", "missing"] * n_per_defect:
        image, mask = render_sample(product, rng, size, defect)
        images.append(image)
        labels.append(defect is not None)
        masks.append(mask)
    return images, np.array(labels), masks
