"""A small randomly initialised open_clip CLIP, saved the way open_clip checkpoints are saved.

The architecture is open_clip's own ViT-B-16-plus-240 configuration (the WinCLIP paper's) at
240 px with 16 px patches (a 15 x 15 grid), shrunk by the engine's bounded size overrides so that
tests run in seconds. Random weights exercise the mechanics only: accuracy needs real CLIP weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_CLIP_MODEL = "ViT-B-16-plus-240"
TINY_CLIP = {
    "embed_dim": 32,
    "vision_width": 64,
    "vision_layers": 2,
    "text_width": 64,
    "text_heads": 2,
    "text_layers": 1,
}


def save_tiny_clip(path: Path, *, seed: int = 0) -> Path:
    """Write the state dict of a random tiny CLIP to ``path``: safetensors for ``.safetensors``,
    otherwise a pickle-free ``torch.save`` of plain tensors (open_clip's ``.pt``/``.bin`` files)."""
    from open_clip.model import CLIP

    from shared.engine.clip_backbone import clip_architecture

    config = clip_architecture(TINY_CLIP_MODEL, TINY_CLIP)
    torch.manual_seed(seed)
    model = CLIP(config["embed_dim"], config["vision_cfg"], config["text_cfg"])
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
