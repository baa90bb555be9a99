"""WinCLIP and WinCLIP+ (Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and
Segmentation", CVPR 2023) on an open_clip checkpoint read from a local file.

Zero-shot: CLIP compares the whole image and every window of the patch grid (several window sizes)
with two text embeddings, "normal" and "anomalous", each the mean of the paper's compositional
prompt ensemble (state words x templates). A window's score is CLIP's probability of "anomalous";
a patch's score at one window size is the harmonic mean over the windows that contain it; the
zero-shot map is the harmonic mean over the sizes and the whole image.

WinCLIP+ (few-shot): the window and patch embeddings of the normal reference images are a visual
memory; a window or patch scores (1 - its best cosine similarity in that memory) / 2; the few-shot
map is the mean over the window sizes and the patches. Map = mean of the zero-shot and few-shot
maps, image score = mean of the zero-shot image score and the few-shot map's maximum.

The scorer reads frames (``ScoreInput.images``), not the model's routing features: CLIP is its own
backbone. Prompts are embedded once at fitting and stored; serving loads only the image tower,
found by the checkpoint's sha256 (never by a path in the manifest). Accuracy needs real CLIP
weights; none can be downloaded here (docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from shared.engine.backbones import WeightBytes
from shared.engine.clip_backbone import (
    CLIP_WEIGHT_HINT,
    ClipModel,
    embed_images,
    embed_prompts,
    load_clip,
    preprocess,
    read_clip_checkpoint,
    window_tokens,
)
from shared.engine.config import FitConfig
from shared.engine.scorers.base import ArtifactFiles, FitContext, PatchScores, ScoreInput
from shared.errors import ArtifactError, BackboneError, ConfigError

# The compositional prompt ensemble of the paper (its appendix): object-level state words for the
# two states, each put into every template.
NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ANOMALOUS_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = (
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)
_SCORE_FLOOR = 1e-6  # harmonic means of probabilities: keep every term finite
_SEARCH_CHUNK = 2048  # query embeddings compared with the memory at once


def prompt_ensemble(object_name: str) -> tuple[list[str], list[str]]:
    """``(normal prompts, anomalous prompts)``: every state word of the state in every template."""
    normal = [template.format(state.format(object_name)) for state in NORMAL_STATES for template in TEMPLATES]
    anomalous = [
        template.format(state.format(object_name)) for state in ANOMALOUS_STATES for template in TEMPLATES
    ]
    return normal, anomalous


def object_name(class_name: str, config: FitConfig) -> str:
    """The object named in the prompts: the configured one, else the class name in words."""
    if config.clip_object:
        return config.clip_object
    return " ".join(class_name.replace("_", " ").replace("-", " ").replace(".", " ").split())


def text_embeddings(clip: ClipModel, object_name: str) -> torch.Tensor:
    """``(2, D)``: the normalised mean embedding of the normal and of the anomalous prompts."""
    rows = []
    for prompts in prompt_ensemble(object_name):
        mean = embed_prompts(clip, prompts).mean(dim=0)
        rows.append(mean / mean.norm().clamp_min(1e-12))
    return torch.stack(rows)


def harmonic_to_patches(window_scores: torch.Tensor, incidence: torch.Tensor) -> torch.Tensor:
    """``(B, W)`` window scores -> ``(B, N)`` patch scores: for each patch the harmonic mean of the
    scores of the windows that contain it (``incidence``: ``(W, N)`` 0/1)."""
    inverse = 1.0 / window_scores.clamp_min(_SCORE_FLOOR)
    return incidence.sum(dim=0) / (inverse @ incidence)


def _incidence(grid: tuple[int, int], size: int) -> torch.Tensor:
    index = window_tokens(grid, size)
    incidence = torch.zeros(index.shape[0], grid[0] * grid[1])
    incidence.scatter_(1, index, 1.0)
    return incidence


def _association(queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """``(B, Q, D)`` normalised queries -> ``(B, Q)``: (1 - best cosine similarity in memory) / 2."""
    flat = queries.reshape(-1, queries.shape[-1])
    best = torch.empty(len(flat))
    for start in range(0, len(flat), _SEARCH_CHUNK):
        best[start : start + _SEARCH_CHUNK] = (flat[start : start + _SEARCH_CHUNK] @ memory.T).amax(dim=1)
    return ((1.0 - best) / 2.0).view(queries.shape[:2])


class WinClipScorer:
    """CLIP windows against the prompt ensemble (zero-shot) and, with references, a visual memory."""

    def __init__(
        self,
        clip: ClipModel,
        text: torch.Tensor,
        scales: tuple[int, ...],
        window_memory: list[torch.Tensor],
        patch_memory: torch.Tensor,
        memory_owner: torch.Tensor,
        checkpoint_sha256: str,
    ) -> None:
        if len(window_memory) != len(scales):
            raise ConfigError("WinCLIP needs one window memory per window size")
        self.clip = clip
        self.text = text  # (2, D): normal, anomalous
        self.scales = scales
        self.window_memory = window_memory  # per scale (M_s, D); empty: zero-shot
        self.patch_memory = patch_memory  # (M_p, width)
        # Which reference image each memory row came from, per scale then patches (for leave-one-out).
        self.memory_owner = memory_owner
        self.checkpoint_sha256 = checkpoint_sha256
        self._incidence = [_incidence(clip.grid, size) for size in scales]

    @property
    def few_shot(self) -> bool:
        return len(self.patch_memory) > 0

    @property
    def references(self) -> int:
        """How many normal reference images the visual memory holds (0: zero-shot)."""
        return int(self.memory_owner.max()) + 1 if len(self.memory_owner) else 0

    # -- fitting -----------------------------------------------------------------------------

    @classmethod
    def fit(cls, context: FitContext) -> Self:
        config = context.config
        if not config.clip_weights:
            raise BackboneError(
                "WinCLIP needs local CLIP weights: pass --clip-weights FILE with "
                + CLIP_WEIGHT_HINT.format(model=config.clip_model)
                + "; nothing is downloaded"
            )
        path = Path(config.clip_weights).expanduser()
        if not path.is_file():
            raise BackboneError(
                f"CLIP weight file {path} does not exist; supply "
                + CLIP_WEIGHT_HINT.format(model=config.clip_model)
            )
        checkpoint = read_clip_checkpoint(path)
        digest = hashlib.sha256(checkpoint.data).hexdigest()
        clip = load_clip(config.clip_model, config.clip_overrides, checkpoint, with_text=True)
        context.progress.stage(f"{context.class_name}: WinCLIP prompts", 1)
        text = text_embeddings(clip, object_name(context.class_name, config))
        context.progress.advance(1)
        image_only = ClipModel(clip.name, clip.visual, None, clip.logit_scale)
        del clip
        scales = _checked_scales(config.winclip_scales, image_only.grid)
        images = list(context.images) if config.winclip_few_shot else []
        windows, patches, owner = _reference_memory(image_only, images, scales, config.batch_size, context)
        return cls(image_only, text, scales, windows, patches, owner, digest)

    def with_references(self, rows: list[int]) -> WinClipScorer:
        """The same scorer with the memory of reference images ``rows`` only (for leave-one-out)."""
        keep = torch.isin(self.memory_owner, torch.tensor(rows, dtype=torch.long))
        bounds = np.cumsum([0] + [len(m) for m in self.window_memory] + [len(self.patch_memory)])
        windows = [m[keep[bounds[i] : bounds[i + 1]]] for i, m in enumerate(self.window_memory)]
        patches = self.patch_memory[keep[bounds[-2] :]]
        return WinClipScorer(
            self.clip,
            self.text,
            self.scales,
            windows,
            patches,
            self.memory_owner[keep],
            self.checkpoint_sha256,
        )

    # -- scoring -----------------------------------------------------------------------------

    def score(self, batch: ScoreInput) -> PatchScores:
        if not batch.images:
            raise ConfigError("WinCLIP scores frames: the batch carries no images")
        pixels = preprocess(self.clip, list(batch.images))
        embedded = embed_images(self.clip, pixels, self.scales)
        logits = self.clip.logit_scale * self.text
        image_zero = torch.softmax(embedded.image @ logits.T, dim=-1)[:, 1]  # (B,)
        grid_cells = self.clip.grid[0] * self.clip.grid[1]
        inverse = 1.0 / image_zero.clamp_min(_SCORE_FLOOR)[:, None].expand(-1, grid_cells)
        for windows, incidence in zip(embedded.windows, self._incidence, strict=True):
            window_zero = torch.softmax(windows @ logits.T, dim=-1)[..., 1]  # (B, W)
            inverse = inverse + 1.0 / harmonic_to_patches(window_zero, incidence).clamp_min(_SCORE_FLOOR)
        zero_map = (len(self.scales) + 1) / inverse  # harmonic mean over the scales and the image
        if not self.few_shot:
            return PatchScores(zero_map.numpy(), self.clip.grid, image_zero.numpy())
        few_maps = [_association(embedded.patches, self.patch_memory)]
        for windows, memory, incidence in zip(
            embedded.windows, self.window_memory, self._incidence, strict=True
        ):
            few_maps.append(harmonic_to_patches(_association(windows, memory), incidence))
        few_map = torch.stack(few_maps).mean(dim=0)
        patch = (zero_map + few_map) / 2.0
        image = (image_zero + few_map.amax(dim=1)) / 2.0
        return PatchScores(patch.numpy(), self.clip.grid, image.numpy())

    # -- persistence -------------------------------------------------------------------------

    def manifest_facts(self) -> dict[str, Any]:
        return {
            "bank_size": int(len(self.patch_memory) + sum(len(m) for m in self.window_memory)) or None,
            "winclip": {
                "mode": "few-shot" if self.few_shot else "zero-shot",
                "references": self.references,
                "window_sizes": list(self.scales),
                "clip_weights_sha256": self.checkpoint_sha256,
            },
        }

    def write(self, files: ArtifactFiles, key: str) -> None:
        files.tensors[f"winclip_text_{key}"] = self.text.numpy()
        files.tensors[f"winclip_scales_{key}"] = np.asarray(self.scales, dtype=np.int64)
        files.tensors[f"winclip_logit_scale_{key}"] = np.asarray([self.clip.logit_scale], dtype=np.float32)
        files.tensors[f"winclip_clip_sha256_{key}"] = np.frombuffer(
            bytes.fromhex(self.checkpoint_sha256), dtype=np.uint8
        ).copy()
        files.tensors[f"winclip_patches_{key}"] = self.patch_memory.numpy()
        files.tensors[f"winclip_owner_{key}"] = self.memory_owner.numpy()
        for size, memory in zip(self.scales, self.window_memory, strict=True):
            files.tensors[f"winclip_windows{size}_{key}"] = memory.numpy()

    @classmethod
    def read(cls, files: ArtifactFiles, key: str, config: FitConfig) -> Self:
        def tensor(name: str) -> torch.Tensor:
            found = files.tensors.get(f"winclip_{name}_{key}")
            if found is None:
                raise ArtifactError(f"the WinCLIP tensor {name} of slot {key} is missing")
            return torch.from_numpy(np.ascontiguousarray(found))

        digest_bytes = tensor("clip_sha256").numpy()
        if digest_bytes.dtype != np.uint8 or digest_bytes.shape != (32,):
            raise ArtifactError("the WinCLIP checkpoint digest is not 32 bytes")
        digest = bytes(digest_bytes).hex()
        recorded = Path(config.clip_weights or "").name
        weights: WeightBytes = files.find_weights(digest, recorded)
        try:
            clip = load_clip(
                config.clip_model, config.clip_overrides, weights, with_text=False, sha256=digest
            )
        except BackboneError as exc:
            raise ArtifactError(f"the WinCLIP image tower cannot be built: {exc}") from None
        scales = tuple(int(s) for s in tensor("scales").tolist())
        if scales != tuple(config.winclip_scales):
            raise ArtifactError(
                f"WinCLIP window sizes {scales} differ from the config's {config.winclip_scales}"
            )
        _checked_scales(scales, clip.grid)
        text = tensor("text").float()
        if text.shape != (2, clip.embed_dim):
            raise ArtifactError(f"WinCLIP text embeddings are {tuple(text.shape)}, not (2, {clip.embed_dim})")
        windows = [tensor(f"windows{size}").float() for size in scales]
        patches = tensor("patches").float()
        owner = tensor("owner").long()
        if any(w.ndim != 2 or w.shape[1] != clip.embed_dim for w in windows) or (
            patches.ndim != 2 or patches.shape[1] != clip.width
        ):
            raise ArtifactError("WinCLIP memory does not fit the CLIP tower's embedding sizes")
        if len(owner) != len(patches) + sum(len(w) for w in windows):
            raise ArtifactError("WinCLIP memory owners do not match the memory rows")
        scale = float(tensor("logit_scale").float()[0])
        clip = ClipModel(clip.name, clip.visual, None, scale)
        return cls(clip, text, scales, windows, patches, owner, digest)


def _checked_scales(scales: tuple[int, ...], grid: tuple[int, int]) -> tuple[int, ...]:
    if not scales or any(not 1 <= size <= min(grid) for size in scales):
        raise ConfigError(
            f"WinCLIP window sizes {scales} must be 1..{min(grid)} patches (grid {grid[0]}x{grid[1]})"
        )
    return tuple(int(size) for size in scales)


def _reference_memory(
    clip: ClipModel,
    images: list[np.ndarray],
    scales: tuple[int, ...],
    batch_size: int,
    context: FitContext,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Window memories (one per scale), patch memory and each row's reference image."""
    dim, width = clip.embed_dim, clip.width
    windows: list[list[torch.Tensor]] = [[] for _ in scales]
    patches: list[torch.Tensor] = []
    if images:
        context.progress.stage(f"{context.class_name}: WinCLIP visual memory", len(images))
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        embedded = embed_images(clip, preprocess(clip, chunk), scales)
        for i, part in enumerate(embedded.windows):
            windows[i].append(part)
        patches.append(embedded.patches)
        context.progress.advance(len(chunk))
    if not images:
        empty_windows = [torch.zeros(0, dim) for _ in scales]
        return empty_windows, torch.zeros(0, width), torch.zeros(0, dtype=torch.long)
    window_memory = [torch.cat(parts).reshape(-1, dim) for parts in windows]
    patch_all = torch.cat(patches)
    owners = [torch.arange(len(images)).repeat_interleave(m.shape[0] // len(images)) for m in window_memory]
    owners.append(torch.arange(len(images)).repeat_interleave(patch_all.shape[1]))
    return window_memory, patch_all.reshape(-1, width), torch.cat(owners)
