"""WinCLIP / WinCLIP+ mechanics on a small random open_clip model saved like a real checkpoint:
windows, the prompt ensemble, zero- and few-shot maps, and save/load by the checkpoint's sha256.
(Random weights say nothing about accuracy; that needs real CLIP weights.)"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.engine.backbones import WeightBytes
from shared.engine.clip_backbone import (
    clip_architecture,
    embed_images,
    load_clip,
    preprocess,
    read_clip_checkpoint,
    window_tokens,
)
from shared.engine.config import Decision, FitConfig, FitProgress
from shared.engine.fitting import fit_model
from shared.engine.manifest_checks import check_manifest
from shared.engine.persistence import load_model, save_model
from shared.engine.scorers.base import FitContext, ScoreInput
from shared.engine.scorers.winclip import (
    ANOMALOUS_STATES,
    NORMAL_STATES,
    TEMPLATES,
    WinClipScorer,
    harmonic_to_patches,
    prompt_ensemble,
)
from shared.errors import ArtifactError, BackboneError
from shared.synthetic import render_sample
from tests.support.clip import TINY_CLIP, TINY_CLIP_MODEL, save_tiny_clip

SIZE = 64  # the routing backbone's input size (the CLIP tower has its own: 240)
GRID = (15, 15)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip.safetensors")


@pytest.fixture(scope="module")
def clip(clip_file: Path):
    return load_clip(TINY_CLIP_MODEL, TINY_CLIP, read_clip_checkpoint(clip_file), with_text=True)


def winclip_config(clip_file: Path, **changes: object) -> FitConfig:
    config = FitConfig(
        scorer="winclip",
        clip_model=TINY_CLIP_MODEL,
        clip_weights=str(clip_file),
        clip_overrides=dict(TINY_CLIP),
        input_size=SIZE,
        min_holdout=2,
    )
    return replace(config, **changes)  # type: ignore[arg-type]


def fabric(n: int, seed: int = 0, defect: str | None = None) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [render_sample("fabric", rng, 80, defect)[0] for _ in range(n)]


def fitted(clip_file: Path, images: list[np.ndarray], **changes: object) -> WinClipScorer:
    config = winclip_config(clip_file, **changes)
    features = np.zeros((len(images), 1, 1), np.float32)  # WinCLIP looks at the images, not these
    context = FitContext("magnetic_tile", features, (1, 1), config, FitProgress(), images)
    return WinClipScorer.fit(context)


def test_the_prompt_ensemble_puts_every_state_word_into_every_template() -> None:
    normal, anomalous = prompt_ensemble("magnetic tile")
    assert len(normal) == len(NORMAL_STATES) * len(TEMPLATES) == 7 * 22
    assert len(anomalous) == len(ANOMALOUS_STATES) * len(TEMPLATES) == 5 * 22
    assert len(set(normal)) == len(normal) and not set(normal) & set(anomalous)
    assert all("magnetic tile" in prompt for prompt in normal + anomalous)
    assert "a photo of a flawless magnetic tile for visual inspection." in normal
    assert "a cropped photo of the magnetic tile with defect." in anomalous


def test_windows_slide_by_one_patch_over_the_grid() -> None:
    small, mid = window_tokens(GRID, 2), window_tokens(GRID, 3)
    assert small.shape == (14 * 14, 4) and mid.shape == (13 * 13, 9)
    assert small[0].tolist() == [0, 1, 15, 16]  # the top-left 2x2 block
    assert mid[-1].tolist() == [192, 193, 194, 207, 208, 209, 222, 223, 224]  # the bottom-right 3x3
    with pytest.raises(BackboneError):
        window_tokens(GRID, 16)


def test_the_tower_embeds_images_windows_and_patches(clip) -> None:
    pixels = preprocess(clip, fabric(2))
    assert pixels.shape == (2, 3, 240, 240)
    embedded = embed_images(clip, pixels, (2, 3))
    assert embedded.image.shape == (2, 32)
    assert [w.shape for w in embedded.windows] == [(2, 196, 32), (2, 169, 32)]
    assert embedded.patches.shape == (2, 225, 64)
    assert torch.allclose(embedded.windows[0].norm(dim=-1), torch.ones(2, 196))
    # A window as large as the grid holds every patch: CLIP sees the whole image.
    whole = embed_images(clip, pixels, (15,))
    assert torch.allclose(whole.windows[0][:, 0], embedded.image, atol=1e-5)
    # A window embeds only its own patches: changing pixels outside it leaves it unchanged.
    changed = pixels.clone()
    changed[:, :, 160:, :] = 0.0  # rows of patches 10..14
    again = embed_images(clip, changed, (2,))
    assert torch.allclose(again.windows[0][:, 0], embedded.windows[0][:, 0], atol=1e-5)  # rows 0-1
    assert not torch.allclose(again.windows[0][:, -1], embedded.windows[0][:, -1], atol=1e-3)


def test_harmonic_aggregation_to_patches() -> None:
    incidence = torch.zeros(196, 225)
    incidence.scatter_(1, window_tokens(GRID, 2), 1.0)
    flat = harmonic_to_patches(torch.full((1, 196), 0.3), incidence)
    assert torch.allclose(flat, torch.full((1, 225), 0.3))
    scores = torch.full((1, 196), 0.5)
    scores[0, 0] = 0.1  # the top-left window
    patches = harmonic_to_patches(scores, incidence)
    assert patches[0, 0] == pytest.approx(0.1)  # the corner patch lies in that window only
    assert patches[0, 1] == pytest.approx(2 / (1 / 0.1 + 1 / 0.5))  # two windows hold patch 1
    assert patches[0, 224] == pytest.approx(0.5)


def test_zero_shot_scores_are_clip_probabilities_on_the_clip_grid(clip_file: Path) -> None:
    scorer = fitted(clip_file, fabric(3), winclip_few_shot=False)
    assert not scorer.few_shot and scorer.references == 0
    assert scorer.text.shape == (2, 32)
    assert torch.allclose(scorer.text.norm(dim=-1), torch.ones(2))
    result = scorer.score(ScoreInput(np.zeros((2, 1, 1), np.float32), (1, 1), fabric(2, seed=5)))
    assert result.grid == GRID and result.patch.shape == (2, 225) and result.image is not None
    assert ((result.patch > 0) & (result.patch < 1)).all() and ((result.image > 0) & (result.image < 1)).all()
    facts = scorer.manifest_facts()
    assert facts["winclip"]["mode"] == "zero-shot" and facts["bank_size"] is None


def test_few_shot_memory_holds_every_window_and_patch_of_the_references(clip_file: Path) -> None:
    references = fabric(3)
    scorer = fitted(clip_file, references)
    assert scorer.few_shot and scorer.references == 3
    assert [len(m) for m in scorer.window_memory] == [3 * 196, 3 * 169] and len(
        scorer.patch_memory
    ) == 3 * 225
    zero = fitted(clip_file, references, winclip_few_shot=False)
    empty = np.zeros((1, 1, 1), np.float32)
    # A reference image matches itself in the memory: its few-shot distances are 0, so its map is
    # half the zero-shot map and its image score half the zero-shot image score.
    own = scorer.score(ScoreInput(empty, (1, 1), references[:1]))
    alone = zero.score(ScoreInput(empty, (1, 1), references[:1]))
    np.testing.assert_allclose(own.patch, alone.patch / 2, atol=1e-5)
    np.testing.assert_allclose(own.image, alone.image / 2, atol=1e-5)
    # Without its own rows in the memory, it is farther from the memory than with them.
    others = scorer.with_references([1, 2])
    assert [len(m) for m in others.window_memory] == [2 * 196, 2 * 169] and len(others.patch_memory) == 450
    left_out = others.score(ScoreInput(empty, (1, 1), references[:1]))
    assert (left_out.patch >= own.patch - 1e-6).all() and left_out.image[0] > own.image[0]


def test_a_missing_checkpoint_is_an_error_that_names_the_file_to_supply(
    clip_file: Path, tmp_path: Path
) -> None:
    with pytest.raises(BackboneError, match=r"--clip-weights FILE .*vit_b_16_plus_240-laion400m_e32"):
        fitted(clip_file, fabric(2), clip_weights=None)
    with pytest.raises(BackboneError, match="does not exist"):
        fitted(clip_file, fabric(2), clip_weights=str(tmp_path / "nothing.pt"))


def test_checkpoints_load_from_safetensors_or_a_pickle_free_torch_file(tmp_path: Path) -> None:
    pt = save_tiny_clip(tmp_path / "tiny.pt")
    loaded = load_clip(TINY_CLIP_MODEL, TINY_CLIP, read_clip_checkpoint(pt), with_text=False)
    assert loaded.text is None and loaded.grid == GRID and loaded.embed_dim == 32
    # Anything that is not plain tensors is refused by torch.load(weights_only=True).
    torch.save({"visual.proj": torch.zeros(1), "code": object()}, tmp_path / "evil.pt")
    with pytest.raises(BackboneError, match="not a loadable weight file"):
        load_clip(TINY_CLIP_MODEL, TINY_CLIP, read_clip_checkpoint(tmp_path / "evil.pt"), with_text=False)
    # A checkpoint of another size does not fit.
    with pytest.raises(BackboneError, match="does not fit"):
        load_clip(
            TINY_CLIP_MODEL, {**TINY_CLIP, "vision_width": 128}, read_clip_checkpoint(pt), with_text=False
        )


def test_only_plain_vit_clip_configurations_and_bounded_overrides_are_accepted() -> None:
    assert clip_architecture("ViT-B-16")["vision_cfg"]["patch_size"] == 16
    for name in ("RN50", "hf-hub:laion/CLIP-ViT-B-32", "no-such-model", "ViT-B-16-SigLIP"):
        with pytest.raises(BackboneError):
            clip_architecture(name)
    with pytest.raises(BackboneError, match="not allowed"):
        clip_architecture("ViT-B-16", {"timm_model_name": 1})
    with pytest.raises(BackboneError, match="integer in"):
        clip_architecture("ViT-B-16", {"vision_layers": 1000})


@pytest.fixture(scope="module")
def winclip_model(clip_file: Path):
    return fit_model({"fabric": fabric(5)}, winclip_config(clip_file))


def test_a_winclip_model_scores_frames_with_maps_and_regions(winclip_model) -> None:
    frames = fabric(1, seed=3) + fabric(1, seed=4, defect="spot")
    frames.append(np.full((50, 90, 3), 120, np.uint8))  # any frame size; no product the model knows
    results = winclip_model.score_batch(frames)
    assert [r.product_class for r in results] == ["fabric", "fabric", "unknown"]  # routing as ever
    assert results[2].decision == Decision.REVIEW
    for frame, result in zip(frames, results, strict=True):
        assert result.anomaly_map.shape == frame.shape[:2]
        assert np.isfinite(result.raw_score) and 0.0 <= result.score <= 1.0
        for region in result.regions:
            assert 0 <= region.x < frame.shape[1] and 0 <= region.y < frame.shape[0]
    calibration = winclip_model.class_models[0].calibration
    # The threshold comes from normal images the scorer had not seen: out-of-fold over all five.
    assert calibration["n_holdout"] == 5 and calibration["folds"] > 1


def test_a_winclip_model_saves_with_hashed_files_and_finds_its_checkpoint_by_sha256(
    winclip_model, clip_file: Path, tmp_path: Path
) -> None:
    frames = fabric(2, seed=9)
    expected = [r.raw_score for r in winclip_model.score_batch(frames)]
    save_model(winclip_model, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"tensors.safetensors"}  # no pickle, no CLIP weights copied
    digest = hashlib.sha256(clip_file.read_bytes()).hexdigest()
    entry = manifest["classes"][0]
    assert entry["winclip"] == {
        "mode": "few-shot",
        "references": 5,  # calibrated on 2 held-out images, then refitted on all 5
        "window_sizes": [2, 3],
        "clip_weights_sha256": digest,
    }
    # Found in the weights directory by its recorded name or by its digest; never at the recorded path.
    with pytest.raises(ArtifactError, match=f"sha256 {digest}.*tiny_clip.safetensors"):
        load_model(tmp_path / "m")
    reloaded = load_model(tmp_path / "m", weights_dir=clip_file.parent)
    assert [r.raw_score for r in reloaded.score_batch(frames)] == pytest.approx(expected, abs=1e-6)
    by_digest = tmp_path / "weights"
    by_digest.mkdir()
    shutil.copy(clip_file, by_digest / f"{digest}.safetensors")
    assert load_model(tmp_path / "m", weights_dir=by_digest).version == winclip_model.version
    # Another checkpoint under the recorded name is not the one the model was fitted with.
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    save_tiny_clip(impostor / "tiny_clip.safetensors", seed=1)
    with pytest.raises(ArtifactError, match=f"sha256 {digest}"):
        load_model(tmp_path / "m", weights_dir=impostor)


def test_the_manifest_refuses_clip_settings_outside_their_bounds(winclip_model, tmp_path: Path) -> None:
    save_model(winclip_model, tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    check_manifest(manifest, "m")
    for key, value, message in (
        ("clip_overrides", {"vision_layers": 999}, "integer in"),
        ("clip_overrides", {"pretrained": "laion"}, "not allowed"),
        ("winclip_scales", [], "winclip_scales"),
        ("winclip_scales", [2, 300], "winclip_scales"),
    ):
        changed = json.loads(json.dumps(manifest))
        changed["config"][key] = value
        with pytest.raises(ArtifactError, match=message):
            check_manifest(changed, "m")


def test_weight_bytes_are_what_is_parsed(clip_file: Path) -> None:
    data = clip_file.read_bytes()
    loaded = load_clip(
        TINY_CLIP_MODEL, TINY_CLIP, WeightBytes(Path("renamed.safetensors"), data), with_text=False
    )
    assert loaded.width == 64
