"""Registers ``fit``, ``evaluate`` and ``score``; the heavy imports happen inside the handlers."""

from __future__ import annotations

import argparse

BACKBONE_NAMES = (
    "dinov2_vits14",
    "dinov2_vitb14",
    "dinov2_vitl14",
    "dinov2_vits14_reg",
    "dinov2_vitb14_reg",
    "dinov2_vitl14_reg",
    "wide_resnet50_2",
    "efficientnet_lite0",
)

# shared.engine.patch_scoring.INDEX_KINDS, spelled out so that building the parser imports no torch.
INDEX_CHOICES = ("flat", "pca-refine", "hnsw", "ivf")


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("layers are comma-separated integers, e.g. 2,3") from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    fit = subparsers.add_parser("fit", help="fit a model from normal images (MVTec AD layout)")
    fit.add_argument("--data", required=True, help="MVTec root or one class folder")
    fit.add_argument(
        "--class", dest="classes", action="append", metavar="NAME", help="class to fit (repeatable)"
    )
    fit.add_argument("--backbone", default="efficientnet_lite0", choices=BACKBONE_NAMES)
    fit.add_argument("--weights", help="backbone weight file (safetensors or .pth); default: local source")
    fit.add_argument("--input-size", type=_positive, default=224)
    fit.add_argument("--layers", type=_layers, help="ViT blocks or CNN stages, e.g. 2,3")
    fit.add_argument("--vit-combine", choices=("mean", "concat"), default="mean")
    fit.add_argument("--bank-size", type=_positive, default=10_000, help="coreset size per class")
    fit.add_argument(
        "--bank-ratio", type=float, help="coreset as a share of all patches (overrides --bank-size)"
    )
    fit.add_argument("--scorer", choices=("knn", "patchcore", "gaussian"), default="knn")
    fit.add_argument("--k", type=_positive, default=1, help="neighbours averaged per patch")
    fit.add_argument(
        "--index",
        choices=INDEX_CHOICES,
        default="flat",
        help="flat: exact; pca-refine: PCA candidates re-ranked exactly (faster for ViT features); "
        "hnsw/ivf: approximate, for very large banks",
    )
    fit.add_argument("--reduced-dims", type=_positive, default=128, help="pca-refine: candidate search dims")
    fit.add_argument(
        "--refine-factor", type=_positive, default=8, help="pca-refine: candidates per neighbour"
    )
    fit.add_argument("--image-score", choices=("max", "top1"), default="max")
    fit.add_argument("--target-frr", type=float, default=0.01, help="false-reject rate the threshold aims at")
    fit.add_argument("--holdout", type=float, default=0.2, help="share of normal images kept for calibration")
    fit.add_argument(
        "--defect-samples", help="folder of defective samples (per class subfolders) for an F1 threshold"
    )
    fit.add_argument(
        "--bank-from-train-only",
        action="store_true",
        help="keep the calibration images out of the final bank (default: refit the bank on all normals)",
    )
    fit.add_argument("--threads", type=_positive, help="torch/faiss threads (default: torch's)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", required=True, help="model directory to write")
    fit.add_argument("--force", action="store_true", help="replace an existing model directory")
    fit.set_defaults(handler=_run_fit)

    evaluate = subparsers.add_parser("evaluate", help="evaluate a model on MVTec-layout test data")
    evaluate.add_argument("--model", required=True, help="model directory")
    evaluate.add_argument("--data", required=True, help="MVTec root or one class folder")
    evaluate.add_argument("--class", dest="classes", action="append", metavar="NAME")
    evaluate.add_argument("--batch-size", type=_positive, default=1)
    evaluate.add_argument("--threads", type=_positive)
    evaluate.add_argument("--json", action="store_true", help="end with one JSON line")
    evaluate.set_defaults(handler=_run_evaluate)

    score = subparsers.add_parser("score", help="score image files with a model")
    score.add_argument("--model", required=True, help="model directory")
    score.add_argument("images", nargs="+", metavar="IMAGE")
    score.add_argument("--hint", help="expected product class (cross-checked)")
    score.add_argument("--overlay-dir", help="write <name>_overlay.png heatmaps here")
    score.add_argument("--threads", type=_positive)
    score.add_argument("--json", action="store_true", help="end with one JSON line")
    score.set_defaults(handler=_run_score)


def _run_fit(args: argparse.Namespace) -> int:
    from services.model_tools.commands import run_fit

    return run_fit(args)


def _run_evaluate(args: argparse.Namespace) -> int:
    from services.model_tools.commands import run_evaluate

    return run_evaluate(args)


def _run_score(args: argparse.Namespace) -> int:
    from services.model_tools.commands import run_score

    return run_score(args)
