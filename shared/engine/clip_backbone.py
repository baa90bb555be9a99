"""CLIP towers from a local open_clip checkpoint, and the window embeddings WinCLIP needs.

Nothing is downloaded: the architecture is one of open_clip's built-in ViT configurations (JSON
files inside the installed package), optionally shrunk by bounded size overrides (small test
models); the weights are a state dict in the format open_clip saves (safetensors, or a ``.bin`` /
``.pt`` read with ``torch.load(weights_only=True)``), given by path at fitting and found by its
sha256 when a model is loaded. Only plain ViT image towers with open_clip's own text transformer
are accepted (no timm or Hugging Face towers: those would fetch code or weights by name).

A window embedding (WinCLIP, Jeong et al., CVPR 2023) is the image tower run on the class token
and only the patch tokens inside one window of the patch grid, each with its position embedding:
CLIP then embeds that part of the image as if it were the whole image.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from shared.engine.backbones import WeightBytes, read_state_dict
from shared.errors import BackboneError

DEFAULT_CLIP_MODEL = "ViT-B-16-plus-240"  # the WinCLIP paper's backbone (open_clip, LAION-400M)
CLIP_WEIGHT_HINT = (
    "an open_clip checkpoint of {model}, e.g. for ViT-B-16-plus-240 the LAION-400M weights "
    "vit_b_16_plus_240-laion400m_e32-699c4b84.pt (open_clip's release file) or open_clip_pytorch_model.bin / "
    "open_clip_model.safetensors from the Hugging Face repo timm/vit_base_patch16_plus_clip_240.laion400m_e31"
)
# open_clip's (OpenAI's) image statistics: every built-in ViT CLIP configuration uses them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Size overrides a model's settings may apply to the named architecture (``FitConfig.clip_overrides``),
# with type and bounds; anything else is refused at fitting and at loading.
CLIP_OVERRIDES: Mapping[str, tuple[float, float]] = {
    "embed_dim": (8, 4096),
    "image_size": (32, 1024),
    "patch_size": (4, 64),
    "vision_width": (32, 4096),
    "vision_layers": (1, 64),
    "text_width": (32, 4096),
    "text_heads": (1, 64),
    "text_layers": (1, 64),
}
_VISION_KEYS = frozenset({"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"})
_TEXT_KEYS = frozenset({"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"})
_TOP_KEYS = frozenset({"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"})


def check_clip_overrides(overrides: object) -> dict[str, int]:
    """``overrides`` if every key is allowed and every value an integer within its bounds."""
    if not isinstance(overrides, dict):
        raise BackboneError("clip_overrides must be a mapping")
    checked: dict[str, int] = {}
    for key, value in overrides.items():
        if key not in CLIP_OVERRIDES:
            raise BackboneError(
                f"clip_overrides: {str(key)[:64]!r} is not allowed; allowed: {', '.join(CLIP_OVERRIDES)}"
            )
        low, high = CLIP_OVERRIDES[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise BackboneError(f"clip_overrides: {key} must be an integer in [{int(low)}, {int(high)}]")
        checked[key] = value
    return checked


def clip_architecture(name: str, overrides: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The open_clip configuration ``name`` with ``overrides`` applied, checked to be a plain ViT CLIP."""
    import open_clip

    if ":" in name or "/" in name or name not in open_clip.list_models():
        raise BackboneError(f"{name!r} is not one of open_clip's built-in model configurations")
    config = copy.deepcopy(open_clip.get_model_config(name))
    unknown = (
        set(config) - _TOP_KEYS
        or set(config.get("vision_cfg", {})) - _VISION_KEYS
        or set(config.get("text_cfg", {})) - _TEXT_KEYS
    )
    vision = config.get("vision_cfg", {})
    if unknown or not isinstance(vision.get("layers"), int):
        raise BackboneError(
            f"open_clip model {name} is not a plain ViT CLIP (it has {sorted(unknown) or 'a ResNet tower'}); "
            "WinCLIP needs one such as ViT-B-16-plus-240, ViT-B-16 or ViT-L-14"
        )
    size = dict(check_clip_overrides(dict(overrides or {})))
    text = config["text_cfg"]
    for key, target, field in (
        ("embed_dim", config, "embed_dim"),
        ("image_size", vision, "image_size"),
        ("patch_size", vision, "patch_size"),
        ("vision_width", vision, "width"),
        ("vision_layers", vision, "layers"),
        ("text_width", text, "width"),
        ("text_heads", text, "heads"),
        ("text_layers", text, "layers"),
    ):
        if key in size:
            target[field] = size[key]
    head_width = vision.get("head_width", 64)
    if vision["width"] % head_width or text["width"] % text.get("heads", 8):
        raise BackboneError(
            f"open_clip model {name}: tower widths must divide into heads "
            f"(image {vision['width']} / {head_width}, text {text['width']} / {text.get('heads', 8)})"
        )
    if vision["image_size"] % vision["patch_size"]:
        raise BackboneError(f"open_clip model {name}: image size must be a multiple of the patch size")
    return config


def _clean_state(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise BackboneError(f"checkpoint entry {str(key)[:64]!r} is not a tensor")
        cleaned[key.removeprefix("module.")] = value
    return cleaned


def _load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, name: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or misshapen:
        raise BackboneError(
            f"{what} does not fit open_clip {name}: missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"other shapes {misshapen[:4]}"
        )
    module.load_state_dict(dict(state), strict=True)


@dataclass
class ClipModel:
    """The image tower (always) and the text tower (only while fitting: prompts are embedded once)."""

    name: str
    visual: Any  # open_clip VisionTransformer
    text: Any | None  # the full open_clip CLIP when the text tower is loaded
    logit_scale: float  # CLIP's learned temperature (exp of the checkpoint's logit_scale)

    @property
    def image_size(self) -> int:
        return int(self.visual.image_size[0])

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.visual.grid_size[0]), int(self.visual.grid_size[1])

    @property
    def embed_dim(self) -> int:
        return int(self.visual.output_dim)

    @property
    def width(self) -> int:
        return int(self.visual.conv1.out_channels)


_SHARED: weakref.WeakValueDictionary[tuple[str, str, str], ClipModel] = weakref.WeakValueDictionary()


def load_clip(
    name: str,
    overrides: Mapping[str, int] | None,
    weights: Path | WeightBytes,
    *,
    with_text: bool,
    sha256: str | None = None,
) -> ClipModel:
    """Build ``name`` and load ``weights`` into it (every tower tensor must be there, in its shape).

    Image-only models of the same checkpoint (``sha256``) are shared by every class that uses them.
    """
    import open_clip
    from open_clip.model import CLIP, _build_vision_tower

    config = clip_architecture(name, overrides)
    key = (name, repr(sorted(dict(overrides or {}).items())), sha256 or "")
    if not with_text and sha256 is not None and key in _SHARED:
        return _SHARED[key]
    state = _clean_state(read_state_dict(weights))
    what = f"CLIP checkpoint {weights.name}"
    quick_gelu = bool(config.get("quick_gelu", False))
    try:
        if with_text:
            model = CLIP(config["embed_dim"], config["vision_cfg"], config["text_cfg"], quick_gelu=quick_gelu)
            state = {k: v for k, v in state.items() if k != "logit_bias"}
            _load_strict(model, state, what, name)
            model.eval().requires_grad_(False)
            visual, text = model.visual, model
        else:
            visual = _build_vision_tower(config["embed_dim"], config["vision_cfg"], quick_gelu)
            tower = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
            _load_strict(visual, tower, what, name)
            visual.eval().requires_grad_(False)
            text = None
    except BackboneError:
        raise
    except (RuntimeError, TypeError, ValueError) as exc:
        raise BackboneError(f"{what} cannot be loaded into open_clip {name} ({exc})") from None
    if "logit_scale" not in state:
        raise BackboneError(f"{what} has no logit_scale: it is not a full open_clip CLIP checkpoint")
    scale = float(state["logit_scale"].float().exp().clamp(max=100.0))
    del open_clip
    clip = ClipModel(name, visual, text, scale)
    if not with_text and sha256 is not None:
        _SHARED[key] = clip
    return clip


def preprocess(clip: ClipModel, images: Sequence[np.ndarray]) -> torch.Tensor:
    """``HxWx3 uint8`` frames squashed to the tower's square input (bicubic) and normalised.

    A square resize, not CLIP's centre crop: an inspection must see the whole part.
    """
    size = clip.image_size
    batch = np.stack(
        [
            np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
            for image in images
        ]
    )
    pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def window_tokens(grid: tuple[int, int], size: int) -> torch.Tensor:
    """``(n_windows, size * size)`` patch-token indices of every ``size`` x ``size`` window (stride 1)."""
    rows, cols = grid
    if not 1 <= size <= min(rows, cols):
        raise BackboneError(f"a window of {size} patches does not fit the {rows}x{cols} patch grid")
    index = torch.arange(rows * cols).view(rows, cols)
    windows = index.unfold(0, size, 1).unfold(1, size, 1)  # (rows-size+1, cols-size+1, size, size)
    return windows.reshape(-1, size * size)


@dataclass
class ImageEmbeddings:
    """CLIP's view of a batch: the whole image, every window of every scale, and every patch."""

    image: torch.Tensor  # (B, D) projected, L2-normalised
    windows: list[torch.Tensor]  # per window scale: (B, n_windows, D) projected, L2-normalised
    patches: torch.Tensor  # (B, N, width) output patch tokens, L2-normalised


@torch.inference_mode()
def embed_images(
    clip: ClipModel, pixels: torch.Tensor, scales: Sequence[int], window_batch: int = 4096
) -> ImageEmbeddings:
    """Image, window and patch embeddings of preprocessed ``pixels``."""
    visual = clip.visual
    tokens = visual._embeds(pixels)  # class token + patch tokens, position-embedded, ln_pre applied
    out = visual.transformer(tokens)
    pooled, patches = visual._pool(out)
    image = pooled @ visual.proj if visual.proj is not None else pooled
    windows = []
    batch = tokens.shape[0]
    for size in scales:
        index = window_tokens(clip.grid, size) + 1  # +1: token 0 is the class token
        count = index.shape[0]
        chosen = torch.cat([torch.zeros(count, 1, dtype=torch.long), index], dim=1)  # (W, 1 + s*s)
        # Every (image, window) pair is one short sequence: the class token and the window's patches.
        sequences = tokens[:, chosen].reshape(batch * count, chosen.shape[1], -1)
        parts = []
        for start in range(0, len(sequences), window_batch):
            encoded = visual.transformer(sequences[start : start + window_batch])
            part, _ = visual._pool(encoded)
            parts.append(part @ visual.proj if visual.proj is not None else part)
        windows.append(F.normalize(torch.cat(parts), dim=-1).view(batch, count, -1))
    return ImageEmbeddings(F.normalize(image, dim=-1), windows, F.normalize(patches, dim=-1))


@torch.inference_mode()
def embed_prompts(clip: ClipModel, prompts: Sequence[str]) -> torch.Tensor:
    """``(len(prompts), D)`` L2-normalised text embeddings (needs the text tower)."""
    from open_clip.tokenizer import tokenize

    if clip.text is None:
        raise BackboneError("the CLIP text tower is not loaded (prompts are embedded while fitting)")
    tokens = tokenize(list(prompts), context_length=int(clip.text.context_length))
    return F.normalize(clip.text.encode_text(tokens), dim=-1)


MAX_CLIP_BYTES = (
    8 << 30
)  # the largest CLIP checkpoint read into memory (ViT-bigG is ~10 GB in fp32: use fp16)


def read_clip_checkpoint(path: Path) -> WeightBytes:
    """A checkpoint's bytes, read once and bounded (hashed and parsed from this one copy)."""
    size = path.stat().st_size
    if size > MAX_CLIP_BYTES:
        raise BackboneError(f"{path} is {size} bytes, over the limit of {MAX_CLIP_BYTES}")
    with path.open("rb") as handle:
        data = handle.read(MAX_CLIP_BYTES + 1)
    if len(data) > MAX_CLIP_BYTES:
        raise BackboneError(f"{path} is over {MAX_CLIP_BYTES} bytes")
    return WeightBytes(path, data)
