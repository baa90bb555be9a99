"""Few-shot models against the number of shots on real industrial images (docs/benchmarks.md, "Few-shot").

    .venv/bin/python -m benchmarks.fewshot table --data ../shared/datasets/magnetic_tile --json out.json
    .venv/bin/python -m benchmarks.fewshot select --data ../shared/datasets/magnetic_tile

``table``: for each K in ``--shots`` the shots are the first K images of train/good by file name
(``--seeds``: also K images chosen at random with each seed). Each set is fitted twice: as a few-shot
model (``lineguard fit --shots K``, the engine's defaults) and as today's plain fit on the same K
images (``lineguard fit`` on a folder of K images; it needs 2). "all" is the plain fit on every
train/good image. Every model scores every test image (no hints, as on the line): image AUROC and
the false-reject and escape rates at the model's own threshold (image level only).

``select`` is how the few-shot settings were chosen, on training images only: shots from train/good
(the first K by name), and a validation set of other train/good images, half as they are and half
with synthetic defects drawn on them (dark spots, thin dark lines, broken edges, stains, pasted
patches); validation image AUROC and the false-reject rate at the calibrated threshold for each
setting. Test images are never read in this mode.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from shared.engine.config import FEW_SHOT_BLUR_SIGMA, FEW_SHOT_IMAGE_SCORE, FitConfig
from shared.engine.dataset import ClassData, discover
from shared.engine.fewshot import fit_few_shot, select_shots
from shared.engine.fitting import fit_model
from shared.engine.images import load_image_file, load_source
from shared.engine.metrics import auroc, rates_at_threshold
from shared.engine.model import InspectionModel

# --- synthetic defects on normal training images (validation in ``select`` only) -----------------


def _blob(rng: np.random.Generator, h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    dy, dx = ys - cy, xs - cx
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
    theta = np.arctan2(v, u)
    wobble = 1 + 0.25 * np.sin(3 * theta + rng.uniform(0, 6)) + 0.15 * np.sin(5 * theta + rng.uniform(0, 6))
    return np.clip((wobble - np.sqrt(u * u + v * v)) * 3, 0, 1)


def synthetic_defect(image: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    """``image`` with one defect of ``kind`` drawn on it (spot, line, edge, stain or paste)."""
    pixels = image.astype(np.float32).copy()
    h, w = pixels.shape[:2]
    side = min(h, w)
    if kind == "spot":  # a dark pit
        r = rng.uniform(0.02, 0.06) * side
        mask = _blob(
            rng, h, w, rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w, r, r * rng.uniform(0.6, 1.4)
        )
        pixels *= 1 - mask[..., None] * rng.uniform(0.4, 0.7)
    elif kind == "line":  # a thin dark crack
        canvas = Image.new("L", (w, h), 0)
        points = [(rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h)]
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(rng.integers(3, 8)):
            angle += rng.normal(0, 0.5)
            step = rng.uniform(0.03, 0.08) * side
            points.append((points[-1][0] + step * np.cos(angle), points[-1][1] + step * np.sin(angle)))
        ImageDraw.Draw(canvas).line(points, fill=255, width=int(rng.integers(2, 5)))
        mask = np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.8)), np.float32) / 255
        pixels *= 1 - mask[..., None] * rng.uniform(0.4, 0.7)
    elif kind == "edge":  # a piece broken off an edge
        r = rng.uniform(0.05, 0.12) * side
        centres = [
            (0, rng.uniform(0.2, 0.8) * w),
            (h - 1, rng.uniform(0.2, 0.8) * w),
            (rng.uniform(0.2, 0.8) * h, 0),
            (rng.uniform(0.2, 0.8) * h, w - 1),
        ]
        cy, cx = centres[rng.integers(4)]
        mask = _blob(rng, h, w, cy, cx, r, r * rng.uniform(1, 2))
        pixels = pixels * (1 - mask[..., None]) + mask[..., None] * rng.uniform(5, 25)
    elif kind == "stain":  # an uneven patch, darker or brighter
        r = rng.uniform(0.08, 0.2) * side
        mask = _blob(
            rng, h, w, rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w, r, r * rng.uniform(0.5, 1.5)
        )
        mask = (
            np.asarray(
                Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(r / 4)),
                np.float32,
            )
            / 255
        )
        gain = rng.uniform(0.5, 0.7) if rng.random() < 0.5 else rng.uniform(1.4, 1.8)
        pixels *= 1 + mask[..., None] * (gain - 1)
    else:  # paste: a patch of the same image, turned, somewhere else
        ph, pw = int(rng.uniform(0.08, 0.2) * h), int(rng.uniform(0.08, 0.2) * w)
        y0, x0 = rng.integers(0, h - ph), rng.integers(0, w - pw)
        patch = Image.fromarray(np.clip(pixels[y0 : y0 + ph, x0 : x0 + pw], 0, 255).astype(np.uint8)).rotate(
            180
        )
        y1, x1 = rng.integers(0, h - ph), rng.integers(0, w - pw)
        pixels[y1 : y1 + ph, x1 : x1 + pw] = np.asarray(patch, np.float32) * rng.uniform(0.7, 1.3)
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8)


DEFECT_KINDS = ("spot", "line", "edge", "stain", "paste")


def validation_set(data: ClassData, k: int, n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` normal and ``n`` synthetically defective train/good images, none of the first ``k``."""
    rng = np.random.default_rng(seed)
    pool = rng.permutation(np.arange(k, len(data.train)))
    normal = [load_image_file(data.train[i]) for i in np.sort(pool[:n])]
    defective = [
        synthetic_defect(load_image_file(data.train[i]), rng, DEFECT_KINDS[j % len(DEFECT_KINDS)])
        for j, i in enumerate(np.sort(pool[n : 2 * n]))
    ]
    return normal + defective, np.r_[np.zeros(n), np.ones(n)]


def raw_scores(model: InspectionModel, images: list[np.ndarray], batch: int = 8) -> np.ndarray:
    scores: list[float] = []
    for start in range(0, len(images), batch):
        scores.extend(r.raw_score for r in model.score_batch(images[start : start + batch]))
    return np.asarray(scores)


# --- the two modes ------------------------------------------------------------------------------

SETTINGS: dict[str, dict[str, Any]] = {
    "no views (plain bank of the shots)": {"shot_flips": "none", "shot_gain_steps": 1},
    "mirror views only": {"shot_flips": "both", "shot_gain_steps": 1},
    "exposure views only (0.5-2x, 5 steps)": {
        "shot_flips": "none",
        "shot_gain_max": 2.0,
        "shot_gain_steps": 5,
    },
    "defaults, image score max": {"image_score": "max"},
    "defaults, image score excess": {"image_score": "excess"},
    # The few-shot bank's budget (every patch of the views that fit is kept): 16 shots take 1, 2 or
    # 5 views each within 16k (the default), 32k or 64k.
    "bank budget 16k patches, excess": {"shot_bank_patches": 16_384, "image_score": "excess"},
    "bank budget 32k patches, excess": {"shot_bank_patches": 32_768, "image_score": "excess"},
    "bank budget 32k patches, max": {"shot_bank_patches": 32_768, "image_score": "max"},
    "bank budget 64k patches, excess": {"shot_bank_patches": 65_536, "image_score": "excess"},
    # Candidates beyond the bank (issue 13: 16 shots below 0.90): k > 1, finer features (a larger
    # input: more, smaller patches), the stronger efficientnet_lite2 at its own 260 px. The budgets
    # keep every patch of the 16 shots themselves (40x40 and 33x33 grids).
    "exposure views only, budget 64k, excess": {
        "shot_flips": "none",
        "shot_gain_max": 2.0,
        "shot_gain_steps": 5,
        "shot_bank_patches": 65_536,
        "image_score": "excess",
    },
    "k 3, excess": {"k": 3, "image_score": "excess"},
    "image score top1": {"image_score": "top1"},
    # efficientnet_lite0's few-shot layers are strides 8-32 now (backbones.py); the settings above
    # that name no layers were measured with strides 8-16, which this one keeps.
    "stages 2-3 (strides 8-16), excess": {"layers": (2, 3), "image_score": "excess"},
    "stages 2-4 (strides 8-32), excess": {"layers": (2, 3, 4), "image_score": "excess"},
    "stages 1-2 (strides 4-8), budget 64k, excess": {
        "layers": (1, 2),
        "shot_bank_patches": 65_536,
        "image_score": "excess",
    },
    "input 320 px, budget 32k, excess": {
        "input_size": 320,
        "shot_bank_patches": 32_768,
        "image_score": "excess",
    },
    "efficientnet_lite2 260 px, budget 32k, excess": {
        "backbone": "efficientnet_lite2",
        "input_size": 260,
        "shot_bank_patches": 32_768,
        "image_score": "excess",
    },
    # The map's blur (FitConfig.blur_sigma: 4 until the plain k-NN's real-defect validation chose 8).
    "stages 2-4, excess, blur 4": {"layers": (2, 3, 4), "image_score": "excess", "blur_sigma": 4.0},
    "stages 2-4, excess, blur 8": {"layers": (2, 3, 4), "image_score": "excess", "blur_sigma": 8.0},
}


# Every setting that names no layers was measured while strides 8-16 were the few-shot default; it
# keeps them, so that its numbers in docs/benchmarks.md are reproduced as they were (the default is
# now efficientnet_lite0's strides 8-32, "stages 2-4" here).
# Likewise every setting was measured with the blur sigma of 4 that was the default then.
for _setting in SETTINGS.values():
    _setting.setdefault("layers", (2, 3))
    _setting.setdefault("blur_sigma", 4.0)


def letterbox(image: np.ndarray, size: int, fill: str) -> np.ndarray:
    """``image`` scaled to fit a ``size`` square with its aspect ratio kept, centred, the rest filled
    (``reflect``: mirrored image, ``edge``: its border pixels repeated, ``mean``: its mean grey).

    A preprocessing tried on the input side only (issue 13: every image is otherwise stretched to
    the square, and this data's aspect ratios range from 0.4 to 2.6); the padding is scored too."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    inner_h, inner_w = max(1, round(height * scale)), max(1, round(width * scale))
    small = np.asarray(Image.fromarray(image).resize((inner_w, inner_h), Image.Resampling.BILINEAR))
    top, left = (size - inner_h) // 2, (size - inner_w) // 2
    pad = ((top, size - inner_h - top), (left, size - inner_w - left), (0, 0))
    if fill == "reflect":
        return np.pad(small, pad, mode="symmetric")
    if fill == "edge":
        return np.pad(small, pad, mode="edge")
    return np.pad(small, pad, mode="constant", constant_values=int(small.mean()))


def run_select(args: argparse.Namespace, data: ClassData) -> dict[str, Any]:
    as_given, labels = validation_set(data, max(args.shots), args.validation, args.seed)
    report: dict[str, Any] = {"validation_images": len(as_given), "letterbox": args.letterbox, "settings": {}}
    for k in args.shots:
        shot_files = select_shots(data.train, k)
        for name in args.settings or list(SETTINGS):
            config = replace(FitConfig(), **SETTINGS[name])
            shots: list[Any] = list(shot_files)
            images = as_given
            if args.letterbox != "none":
                size, fill = config.input_size, args.letterbox
                shots = [letterbox(load_source(path), size, fill) for path in shot_files]
                images = [letterbox(image, size, fill) for image in as_given]
            began = time.perf_counter()
            model = fit_few_shot({data.name: shots}, config)
            fit_seconds = time.perf_counter() - began
            scores = raw_scores(model, images)
            threshold = model.class_models[0].threshold
            row = {
                "image_auroc": round(auroc(labels, scores), 4),
                "false_reject_rate": round(float((scores[labels == 0] >= threshold).mean()), 4),
                "fit_seconds": round(fit_seconds, 1),
            }
            report["settings"][f"{k} shots, {name}"] = row
            print(f"{k} shots, {name}: {row}", flush=True)
    return report


def _evaluated(model: InspectionModel, data: ClassData, fit_seconds: float, every: int) -> dict[str, Any]:
    """Image-level metrics on every ``every``-th test image (1: all), scored without hints as the
    line would score them. (Pixel metrics are left out: at this data's resolution they cost more
    than the fits.)"""
    samples = data.test[::every]
    paths = [sample.path for sample in samples]
    labels = np.array([sample.is_defect for sample in samples])
    chunks = [paths[i : i + 32] for i in range(0, len(paths), 32)]
    scores = np.concatenate([raw_scores(model, [load_image_file(p) for p in chunk]) for chunk in chunks])
    class_model = model.class_models[0]
    frr, escape = rates_at_threshold(labels, scores, class_model.threshold)
    return {
        "image_auroc": round(auroc(labels, scores), 4),
        "false_reject_rate": round(frr, 4),
        "escape_rate": round(escape, 4),
        "threshold_approximate": bool(class_model.calibration.get("threshold_approximate", False)),
        "n_good": int((~labels).sum()),
        "n_defect": int(labels.sum()),
        "fit_seconds": round(fit_seconds, 1),
    }


def run_table(args: argparse.Namespace, data: ClassData) -> dict[str, Any]:
    report: dict[str, Any] = {"rows": [], "few_shot_setting": None}
    choices = [("first", None)] + [("seeded", seed) for seed in args.seeds]
    few_shot_config = FitConfig(image_score=FEW_SHOT_IMAGE_SCORE, blur_sigma=FEW_SHOT_BLUR_SIGMA)
    if args.settings:  # the few-shot rows with one setting chosen by ``select`` (on validation)
        (name,) = args.settings
        few_shot_config = replace(few_shot_config, **SETTINGS[name])
        report["few_shot_setting"] = name
    for k in args.shots:
        for protocol, seed in choices:
            shots = select_shots(data.train, k, seed)
            for method in ("few-shot", "plain fit"):
                if method == "plain fit" and (k < 2 or args.skip_plain):
                    continue
                began = time.perf_counter()
                if method == "few-shot":
                    model = fit_few_shot({data.name: shots}, few_shot_config)
                else:
                    model = fit_model({data.name: shots}, FitConfig())
                row = {"shots": k, "choice": protocol, "seed": seed, "method": method}
                row.update(_evaluated(model, data, time.perf_counter() - began, args.test_every))
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
    if not args.skip_all:
        began = time.perf_counter()
        model = fit_model({data.name: list(data.train)}, FitConfig())
        row = {"shots": len(data.train), "choice": "all", "seed": None, "method": "plain fit (all normals)"}
        row.update(_evaluated(model, data, time.perf_counter() - began, args.test_every))
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
    return report


def run_winclip_speed(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per frame of WinCLIP and WinCLIP+ at the paper's size, with random weights (timing only)."""
    from open_clip.model import _build_vision_tower

    from shared.engine.clip_backbone import ClipModel, clip_architecture
    from shared.engine.config import FitProgress
    from shared.engine.scorers.base import FitContext, ScoreInput
    from shared.engine.scorers.winclip import WinClipScorer, _reference_memory

    config = clip_architecture(args.clip_model)
    visual = _build_vision_tower(config["embed_dim"], config["vision_cfg"]).eval().requires_grad_(False)
    clip = ClipModel(args.clip_model, visual, None, 100.0)
    text = torch.nn.functional.normalize(torch.randn(2, clip.embed_dim), dim=-1)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (320, 320, 3), dtype=np.uint8) for _ in range(args.frames)]
    report: dict[str, Any] = {"clip_model": args.clip_model, "grid": list(clip.grid)}
    for references in (0, 4):
        context = FitContext("x", np.zeros((1, 1, 1), np.float32), (1, 1), FitConfig(), FitProgress(), [])
        windows, patches, owner = _reference_memory(clip, frames[:references], (2, 3), 4, context)
        scorer = WinClipScorer(clip, text, (2, 3), windows, patches, owner, "0" * 64)
        scorer.score(ScoreInput(np.zeros((1, 1, 1), np.float32), (1, 1), frames[:1]))  # warm-up
        began = time.perf_counter()
        for frame in frames:
            scorer.score(ScoreInput(np.zeros((1, 1, 1), np.float32), (1, 1), [frame]))
        per_frame = (time.perf_counter() - began) / len(frames)
        report["winclip+ (4 shots)" if references else "winclip (zero-shot)"] = {
            "seconds_per_frame": round(per_frame, 3)
        }
        print(report, flush=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("table", "select", "winclip-speed"))
    parser.add_argument("--data", default="../shared/datasets/magnetic_tile")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument(
        "--seeds", type=int, nargs="*", default=[], help="table: also seeded choices of shots"
    )
    parser.add_argument(
        "--test-every", type=int, default=1, help="table: score every N-th test image (a short run: 40)"
    )
    parser.add_argument("--skip-plain", action="store_true", help="table: no plain fit on the shots")
    parser.add_argument("--skip-all", action="store_true", help="table: no model on all normals")
    parser.add_argument(
        "--settings",
        nargs="*",
        choices=list(SETTINGS),
        help="select: settings to compare; table: the one setting of the few-shot rows",
    )
    parser.add_argument(
        "--validation", type=int, default=150, help="select: normal and defective images each"
    )
    parser.add_argument("--seed", type=int, default=123, help="select: validation images and defects")
    parser.add_argument(
        "--letterbox",
        choices=("none", "reflect", "edge", "mean"),
        default="none",
        help="select: shots and validation images letterboxed to the square first (aspect kept)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clip-model", default="ViT-B-16-plus-240", help="winclip-speed: architecture")
    parser.add_argument("--frames", type=int, default=8, help="winclip-speed: frames timed")
    parser.add_argument("--json", help="write the report here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    (data,) = discover(args.data)
    report: dict[str, Any] = {
        "mode": args.mode,
        "data": args.data,
        "n_train": len(data.train),
        "n_test": len(data.test),
        "config": {
            k: v for k, v in vars(FitConfig()).items() if k.startswith(("shot_", "image_score", "bank_size"))
        },
        "few_shot_image_score": FEW_SHOT_IMAGE_SCORE,  # table: the few-shot rows' (plain rows: max)
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
    }
    modes = {"table": run_table, "select": run_select}
    report.update(run_winclip_speed(args) if args.mode == "winclip-speed" else modes[args.mode](args, data))
    text = json.dumps(report)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
