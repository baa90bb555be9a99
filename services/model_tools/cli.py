"""``lineguard fit``, ``evaluate`` and ``score``: arguments in, ``core`` called, results printed.

Building the parser imports no torch: the core (and with it the engine) is imported by the
handlers, when one of these commands runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.arguments import non_negative_int, positive_int
from services.model_tools import report
from shared.engine.backbones import BACKBONES
from shared.engine.config import (
    DEVICES,
    FEW_SHOT_BLUR_SIGMA,
    FEW_SHOT_IMAGE_SCORE,
    IMAGE_SCORE_MODES,
    INDEX_KINDS,
    PRECISIONS,
    RUNTIME_CHOICES,
    SCORER_KINDS,
    FitConfig,
    FitProgress,
    RuntimeOptions,
)
from shared.errors import LineguardError

BACKBONE_NAMES = tuple(BACKBONES)
INDEX_CHOICES = INDEX_KINDS


JSON_HELP = "print the report as one JSON document on stdout (the readable lines go to stderr)"


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("layers are comma-separated integers, e.g. 2,3") from None


def _add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """--runtime, --device, --precision; each defaults to the scorer's setting (LINEGUARD_SCORER__*)."""
    parser.add_argument(
        "--runtime",
        choices=RUNTIME_CHOICES,
        help="backbone runtime (default: LINEGUARD_SCORER__RUNTIME, auto: openvino when the model has "
        "its backbone export, else torch)",
    )
    parser.add_argument("--device", choices=DEVICES, help="default: LINEGUARD_SCORER__DEVICE (cpu)")
    parser.add_argument(
        "--precision", choices=PRECISIONS, help="default: LINEGUARD_SCORER__PRECISION (fp32)"
    )


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    """The backbone's runtime options: the command's flags over the scorer's settings."""
    from shared.settings import load_settings

    scorer = load_settings().scorer
    return RuntimeOptions(
        runtime=args.runtime or scorer.runtime,
        device=args.device or scorer.device,
        precision=args.precision or scorer.precision,
        torch_threads=args.threads,
    )


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError("expected a JSON object") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def fit_config_from(args: argparse.Namespace, **fixed: Any) -> FitConfig:
    """A FitConfig from the options named after its fields (--bank-size: bank_size), with ``fixed``
    over them (what the command derives, or a value a benchmark sets or sweeps)."""
    fields = {field.name for field in dataclasses.fields(FitConfig)}
    given = {name: value for name, value in vars(args).items() if name in fields}
    return FitConfig(**{**given, **fixed})


def _add_config_option(
    parser: argparse._ActionsContainer, field: str, help_text: str, **options: Any
) -> None:
    """An option that sets the FitConfig field of its name (--shot-gain-max: shot_gain_max), with
    FitConfig's default, so that the default has one home."""
    parser.add_argument(
        "--" + field.replace("_", "-"), default=getattr(FitConfig, field), help=help_text, **options
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    fit = subparsers.add_parser("fit", help="fit a model from normal images (MVTec AD layout)")
    fit.add_argument("--data", required=True, help="MVTec root or one class folder")
    fit.add_argument(
        "--class", dest="classes", action="append", metavar="NAME", help="class to fit (repeatable)"
    )
    fit.add_argument(
        "--backbone", default="efficientnet_lite0", choices=BACKBONE_NAMES, help="feature extractor"
    )
    fit.add_argument("--weights", help="backbone weight file (safetensors or .pth); default: local source")
    fit.add_argument(
        "--input-size",
        type=positive_int,
        help="model input size in pixels (default: the backbone's own, e.g. 224 lite0, 260 lite2)",
    )
    fit.add_argument("--layers", type=_layers, help="ViT blocks or CNN stages, e.g. 2,3")
    fit.add_argument(
        "--vit-combine", choices=("mean", "concat"), default="mean", help="how ViT blocks are combined"
    )
    _add_config_option(fit, "bank_size", "coreset size per class", type=positive_int)
    _add_config_option(
        fit, "bank_ratio", "coreset as a share of all patches (overrides --bank-size)", type=float
    )
    fit.add_argument(
        "--scorer", choices=SCORER_KINDS, default="knn", help="patch scorer (README: which when)"
    )
    _add_config_option(fit, "k", "neighbours averaged per patch", type=positive_int)
    fit.add_argument(
        "--index",
        choices=INDEX_CHOICES,
        default="flat",
        help="flat: exact; pca-refine: PCA candidates re-ranked exactly (faster for ViT features); "
        "hnsw/ivf: approximate, for very large banks",
    )
    _add_config_option(fit, "reduced_dims", "pca-refine: candidate search dims", type=positive_int)
    _add_config_option(fit, "refine_factor", "pca-refine: candidates per neighbour", type=positive_int)
    fit.add_argument(
        "--image-score",
        choices=IMAGE_SCORE_MODES,
        help="max (default) or top1; excess: the maximum above the image's own mean (few-shot default)",
    )
    fit.add_argument(
        "--blur-sigma",
        type=float,
        help=f"Gaussian blur of the anomaly map, in model-input pixels (default {FitConfig.blur_sigma:g}; "
        f"{FEW_SHOT_BLUR_SIGMA:g} with --shots)",
    )
    _add_config_option(fit, "target_frr", "false-reject rate the threshold aims at", type=float)
    fit.add_argument(
        "--calibration-folds",
        type=positive_int,
        metavar="K",
        help=f"threshold from out-of-fold scores of all normal images, K folds (default "
        f"{FitConfig.calibration_folds}; K more fits; labelled supersimplenet: K networks, the "
        "first serves); 1: one held-out share (--holdout)",
    )
    fit.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="with --calibration-folds 1: share of normal images held out",
    )
    fit.add_argument(
        "--defect-samples", help="folder of defective samples (per class subfolders) for an F1 threshold"
    )
    fit.add_argument(
        "--labelled-defects",
        type=positive_int,
        metavar="N",
        help="train on N images per defect type from <class>/test/<type>/ (masks from ground_truth/ "
        "where present), chosen by sorted name and --seed; 'lineguard evaluate' then leaves them out",
    )
    fit.add_argument(
        "--labelled-defects-dir",
        metavar="DIR",
        help="take the labelled defects from DIR instead (same layout, e.g. 'lineguard labels export'; "
        "all of them, or N per type with --labelled-defects); DIR/<class>/train/good are confirmed "
        "normals and join the normal images",
    )
    fit.add_argument(
        "--bank-from-train-only",
        action="store_true",
        help="keep the calibration images out of the final bank (default: refit the bank on all normals)",
    )
    fit.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    fit.add_argument(
        "--no-export",
        action="store_true",
        help="leave out the backbone's ONNX export (then the model runs with the torch runtime only)",
    )
    _add_runtime_arguments(fit)
    fit.add_argument(
        "--seed", type=int, default=0, help="seed of every random choice (coreset, folds, shots)"
    )
    cold = fit.add_argument_group("cold start: a new product from a few normal images (docs/operations.md)")
    cold.add_argument(
        "--shots",
        type=positive_int,
        metavar="K",
        help="few-shot model from K (1-16) normal images of train/good (the first K by name); "
        "its threshold is approximate and its verdicts are 'review' until --review-until confirmed normals",
    )
    cold.add_argument("--shots-seed", type=int, help="choose the K shots at random with this seed instead")
    cold.add_argument(
        "--confirmed-normals",
        metavar="DIR",
        help="operator-confirmed normal images (MVTec layout, e.g. from 'lineguard labels export'): "
        "held out for the threshold, then added to the bank, and counted towards --review-until",
    )
    cold.add_argument(
        "--review-until",
        type=int,
        default=FitConfig.review_until_confirmed,
        metavar="N",
        help="confirmed normal images a few-shot class needs before its verdicts stop being 'review'",
    )
    _add_config_option(
        cold,
        "shot_flips",
        "mirror images of each shot in the bank (only where a mirrored good part is a good part)",
        choices=("none", "horizontal", "both"),
    )
    _add_config_option(
        cold, "shot_gain_max", "exposure views of each shot, from 1/F to F times the brightness", type=float
    )
    _add_config_option(cold, "shot_gain_steps", "number of exposure views", type=positive_int)
    _add_config_option(
        cold,
        "shot_bank_patches",
        "few-shot bank: as many views per shot as fit in N patches, all kept (0: every view, coreset)",
        type=int,
        metavar="N",
    )
    clip = fit.add_argument_group("WinCLIP (--scorer winclip): CLIP read from a local open_clip checkpoint")
    clip.add_argument("--clip-weights", metavar="FILE", help="open_clip checkpoint (.safetensors, .bin, .pt)")
    _add_config_option(clip, "clip_model", "open_clip architecture of the file")
    clip.add_argument("--clip-object", help="the object named in the prompts (default: the class name)")
    clip.add_argument(
        "--clip-overrides",
        type=_json_object,
        default={},
        metavar="JSON",
        help="bounded size overrides of the architecture (small test models), e.g. '{\"vision_layers\": 2}'",
    )
    clip.add_argument("--winclip-scales", type=_layers, default=FitConfig.winclip_scales, help="window sizes")
    clip.add_argument(
        "--zero-shot", action="store_true", help="WinCLIP without a visual memory of the normal images"
    )
    fit.add_argument("--out", required=True, help="model directory to write")
    fit.add_argument("--force", action="store_true", help="replace an existing model directory")
    fit.set_defaults(handler=run_fit)

    evaluate = subparsers.add_parser("evaluate", help="evaluate a model on MVTec-layout test data")
    evaluate.add_argument("--model", required=True, help="model directory")
    evaluate.add_argument("--data", required=True, help="MVTec root or one class folder")
    evaluate.add_argument(
        "--class", dest="classes", action="append", metavar="NAME", help="class to evaluate (repeatable)"
    )
    evaluate.add_argument("--batch-size", type=positive_int, default=1, help="images scored per batch")
    evaluate.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    _add_runtime_arguments(evaluate)
    evaluate.add_argument("--json", action="store_true", help=JSON_HELP)
    evaluate.add_argument(
        "--weights-dir", help="where weight files are found by sha256 (e.g. WinCLIP's CLIP)"
    )
    evaluate.set_defaults(handler=run_evaluate)

    score = subparsers.add_parser("score", help="score image files with a model")
    score.add_argument("--model", required=True, help="model directory")
    score.add_argument("images", nargs="+", metavar="IMAGE", help="image files to score")
    score.add_argument("--hint", help="expected product class (cross-checked)")
    score.add_argument("--overlay-dir", help="write <name>_overlay.png heatmaps here")
    score.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    _add_runtime_arguments(score)
    score.add_argument("--json", action="store_true", help=JSON_HELP)
    score.add_argument("--weights-dir", help="where weight files are found by sha256 (e.g. WinCLIP's CLIP)")
    score.set_defaults(handler=run_score)

    export = subparsers.add_parser(
        "export",
        help="add the backbone's ONNX export to a model (for the openvino and onnx runtimes)",
        description="Load the model with torch, export its backbone to ONNX, check the export against "
        "torch on probe images, and write the model with the export (hashed in its manifest).",
    )
    export.add_argument("--model", required=True, help="model directory")
    export.add_argument("--out", help="write the exported model here (default: replace --model)")
    export.add_argument("--weights", help="the backbone weight file (default: found by its sha256)")
    export.add_argument("--weights-dir", help="folder to find the weight file in by its sha256")
    export.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    export.set_defaults(handler=run_export)
    refits = subparsers.add_parser(
        "refit-proposals",
        help="list the classes whose confirmed normals are enough for a refit",
        description=(
            "Counts the confirmed normal images in CONFIRMED/<class>/train/good (lineguard labels export "
            "--out, or its --collect-normals staging set) for every class of the model, and proposes a "
            "refit for each class that has enough of them: a cold-start class as many as its verdicts "
            "wait for (LINEGUARD_SCORER__REVIEW_UNTIL_CONFIRMED, else the model's own), a fully fitted "
            "class --min-normals. Each proposal is logged as a refit_proposed event. Nothing is refitted "
            'or served: see docs/operations.md, "Cold start".'
        ),
    )
    refits.add_argument("--model", required=True, help="the serving model's directory")
    refits.add_argument(
        "--confirmed-normals", required=True, metavar="CONFIRMED", help="folder of <class>/train/good"
    )
    refits.add_argument(
        "--review-until",
        type=non_negative_int,
        help="confirmed normals a cold-start class needs (default: the scorer setting, else the model's)",
    )
    refits.add_argument(
        "--min-normals", type=positive_int, help="confirmed normals a fully fitted class needs"
    )
    refits.add_argument("--json", action="store_true", help="print the proposals as JSON")
    refits.set_defaults(handler=run_refit_proposals)


def _fail(message: str) -> int:
    print(f"lineguard: {message}", file=sys.stderr)
    return 2


class _TqdmProgress(FitProgress):
    """Fitting progress as one tqdm bar per stage, on stderr."""

    def __init__(self) -> None:
        self._bar: Any = None

    def stage(self, name: str, total: int) -> None:
        from tqdm import tqdm

        self.close()
        self._bar = tqdm(total=total, desc=name, unit="it", file=sys.stderr, leave=True)

    def advance(self, amount: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(amount)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def run_fit(args: argparse.Namespace) -> int:
    from services.model_tools import core

    core.set_threads(args.threads)
    out = Path(args.out)
    labelled_wanted = args.labelled_defects is not None or args.labelled_defects_dir is not None
    progress = _TqdmProgress()
    folds = args.calibration_folds
    if folds is None:
        folds = 1 if args.bank_from_train_only else FitConfig.calibration_folds
    try:
        config = fit_config_from(
            args,
            input_size=args.input_size or BACKBONES[args.backbone].input_size,
            image_score=args.image_score or (FEW_SHOT_IMAGE_SCORE if args.shots else "max"),
            blur_sigma=args.blur_sigma
            if args.blur_sigma is not None
            else (FEW_SHOT_BLUR_SIGMA if args.shots else FitConfig.blur_sigma),
            holdout_fraction=args.holdout,
            calibration_folds=folds,
            bank_from_all_normals=not args.bank_from_train_only,
            review_until_confirmed=args.review_until,
            winclip_few_shot=not args.zero_shot,
        )
        if args.shots is None and (args.shots_seed is not None or args.confirmed_normals):
            return _fail("--shots-seed and --confirmed-normals belong to a few-shot fit (--shots K)")
        if args.shots is not None and labelled_wanted:
            # A few-shot model learns from its shots only; its confirmed normals: --confirmed-normals.
            return _fail("--labelled-defects and --labelled-defects-dir belong to a full fit, not --shots")
        if out.exists() and not args.force:  # before fitting, not after minutes of it
            return _fail(f"{out} already exists; pass --force to replace it")
        model = core.fit_folder(
            args.data,
            args.classes,
            config,
            out,
            overwrite=args.force,
            defect_samples=args.defect_samples,
            labelled_per_type=args.labelled_defects,
            labelled_dir=args.labelled_defects_dir,
            progress=progress,
            options=runtime_options(args),
            export=not args.no_export,
            shots=args.shots,
            shots_seed=args.shots_seed,
            confirmed_normals=args.confirmed_normals,
        )
    except LineguardError as exc:
        return _fail(str(exc))
    finally:
        progress.close()
    print(
        f"model {model.version} ({', '.join(model.classes)}) written to {out}; backbone ran in "
        f"{model.extractor.runtime}{', ' + _export_line(model) if model.extractor.export else ''}"
    )
    training = model.metadata.get("training_data", {})
    for class_model in model.class_models:
        if "cold_start" in class_model.calibration:
            cold = _cold_start_line(class_model.threshold, class_model.calibration)
            print(f"  {class_model.name}: {cold}")
            continue
        for line in _fit_lines(
            class_model.name, class_model.threshold, class_model.calibration, model.config
        ):
            print(f"  {line}")
        confirmed = training.get("confirmed_normals", {}).get(class_model.name)
        if confirmed:
            print(f"  {class_model.name}: {confirmed} confirmed normal images added to the normal images")
        if labelled_wanted and "labelled_defects" not in class_model.calibration:
            print(f"  {class_model.name}: no labelled defects found for this class")
    return 0


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _fit_lines(name: str, threshold: float, calibration: dict[str, Any], config: FitConfig) -> list[str]:
    """What ``lineguard fit`` says about one class: its threshold, where it came from, and what
    the labelled defects were used for."""
    if calibration.get("folds", 1) > 1:
        source = (
            f"out-of-fold scores of all {calibration['n_holdout']} normal images "
            f"({calibration['folds']} folds, each scored by a scorer fitted on the others"
            + ("; the first fold's network serves)" if "served_fold" in calibration else ")")
        )
    else:
        source = f"{calibration['n_holdout']} held-out normal images"
    lines = [
        f"{name}: threshold {threshold:.4f} at {calibration['target_frr']:.1%} false rejects, from {source}"
    ]
    labelled = calibration.get("labelled_defects")
    if labelled is not None:
        types = ", ".join(f"{kind} {count}" for kind, count in labelled["by_type"].items())
        head = f"{name}: {labelled['n']} labelled defects ({types}; {labelled['with_mask']} with masks)"
        if labelled["learned_from"]:
            lines.append(f"{head} trained the {config.scorer} scorer")
        else:
            lines.append(
                f"{head}: the {config.scorer} scorer does not learn from defects; they only offer an "
                f"F1-optimal threshold {calibration['f1_threshold']:.4f} (F1 {calibration['f1']:.3f}, on "
                "these training defects), recorded in the manifest and NOT adopted"
            )
    elif "f1_threshold" in calibration:
        lines.append(
            f"{name}: F1-optimal threshold {calibration['f1_threshold']:.4f} (F1 {calibration['f1']:.3f}) "
            "offered by the defect samples, not adopted"
        )
    return lines


def _cold_start_line(threshold: float, calibration: dict[str, Any]) -> str:
    cold = calibration["cold_start"]
    if calibration.get("threshold_approximate"):
        held = calibration["n_holdout"]
        source = f"{held} confirmed normal images" if held else f"leave-one-out over {cold['shots']} shot(s)"
        head = (
            f"{cold['shots']}-shot model, threshold {threshold:.4f} APPROXIMATE (from {source}; "
            f"aimed at {calibration['target_frr']:.1%} false rejects, the actual rate is unknown)"
        )
    else:
        head = (
            f"{cold['shots']}-shot model, threshold {threshold:.4f} at {calibration['target_frr']:.1%} false "
            f"rejects on {calibration['n_holdout']} confirmed normal images"
        )
    if cold["confirmed_normals"] < cold["review_until_confirmed"]:
        return (
            f"{head}; every verdict is 'review' until {cold['review_until_confirmed']} confirmed normal "
            f"images are fitted in (now {cold['confirmed_normals']})"
        )
    return head


def run_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from services.model_tools import core

    core.set_threads(args.threads)
    bars: list[tqdm] = []
    try:
        model, result = core.evaluate_folder(
            args.model,
            args.data,
            args.classes,
            batch_size=args.batch_size,
            options=runtime_options(args),
            weights_dir=args.weights_dir,
            on_start=lambda total: bars.append(
                tqdm(total=total, desc="scoring", unit="img", file=sys.stderr)
            ),
            progress=lambda done: bars[-1].update(done),
        )
    except LineguardError as exc:
        return _fail(str(exc))
    finally:
        for bar in bars:
            bar.close()
    fit_seconds = model.metadata.get("fit_seconds")
    say = _reporter(args.json)
    say(
        f"model {model.version}: backbone {model.backbone_name} ({model.extractor.runtime}, "
        f"{model.extractor.backend.precision}), fit time {fit_seconds} s"
    )
    for name, metrics in result["classes"].items():
        for line in report.class_lines(name, metrics):
            say(f"  {line}")
        if metrics.get("threshold_approximate"):
            say(
                f"  {name}: few-shot threshold: approximate (not set on held-out normal images); "
                "the false-reject rate above is measured here, not one the model knew"
            )
    if len(result["classes"]) > 1:
        for line in report.class_lines("mean", result["mean"]):
            say(f"  {line}")
    if not result["training_images_recorded"]:
        say("  (this model's manifest records no training images: none could be left out)")
    say(f"  routing accuracy {_fmt(result['routing_accuracy'])}, latency ms {result['latency_ms']}")
    say(f"  pixel metrics: {result['pixel_metrics']['method']}, on the {result['pixel_metrics']['maps']}")
    if args.json:
        print(json.dumps(result, sort_keys=False))
    return 0


def _reporter(json_out: bool) -> Callable[[str], None]:
    """Where the readable lines go: stdout, or stderr when stdout carries the JSON alone (``--json``
    output pipes into ``jq``)."""
    stream = sys.stderr if json_out else sys.stdout
    return lambda line: print(line, file=stream)


def run_score(args: argparse.Namespace) -> int:
    from services.model_tools import core
    from shared.engine.persistence import load_model

    core.set_threads(args.threads)
    try:
        model = load_model(args.model, options=runtime_options(args), weights_dir=args.weights_dir)
    except LineguardError as exc:
        return _fail(str(exc))
    overlay_dir = Path(args.overlay_dir) if args.overlay_dir else None
    if overlay_dir is not None:
        overlay_dir.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    failed = False
    say = _reporter(args.json)
    for name in args.images:
        scored = core.score_file(model, name, args.hint, overlay_dir)
        entries.append(scored.entry)
        result = scored.result
        if result is None:
            failed = True
            say(f"{name}: error: {scored.entry['error']}")
            continue
        regions = "; ".join(
            f"{r['x']},{r['y']} {r['width']}x{r['height']} ({r['score']:.2f})"
            for r in scored.entry["regions"]
        )
        say(
            f"{name}: class {result.product_class} (confidence {result.route_confidence:.2f}), "
            f"score {result.score:.3f} (raw {result.raw_score:.4f}, threshold {result.threshold:.4f}), "
            f"{result.decision}{' - ' + result.reason if result.reason else ''}"
            f"{', regions ' + regions if regions else ''}"
        )
    if args.json:
        print(json.dumps({"model_version": model.version, "results": entries}))
    return 1 if failed else 0


def _export_line(model: Any) -> str:
    parity = model.extractor.export.facts["parity"]
    worst = max(parity["max_abs_diff"].values())
    largest = parity["reference_max_abs"]
    return f"ONNX export included (largest difference to torch {worst:.2g}, features up to {largest:.3g})"


def run_export(args: argparse.Namespace) -> int:
    from services.model_tools import core

    core.set_threads(args.threads)
    out = Path(args.out or args.model)
    try:
        model = core.export_model(args.model, out, weights=args.weights, weights_dir=args.weights_dir)
    except LineguardError as exc:
        return _fail(str(exc))
    print(f"model {model.version} written to {out} with its backbone export; {_export_line(model)}")
    return 0


def run_refit_proposals(args: argparse.Namespace) -> int:
    import logging

    from services.model_tools.proposals import propose_refits
    from shared.engine.artifacts import read_manifest
    from shared.settings import load_settings
    from shared.telemetry.logging import log_event

    review_until = args.review_until
    if review_until is None:
        review_until = load_settings().scorer.review_until_confirmed
    manifest = read_manifest(args.model)  # verified: every file against its hash
    proposals = propose_refits(
        manifest,
        Path(args.model),
        Path(args.confirmed_normals),
        review_until=review_until,
        min_normals=args.min_normals,
    )
    log = logging.getLogger("lineguard.model_tools")
    version = manifest.get("model_version")
    for proposal in proposals:
        if proposal.proposed:
            log_event(log, "refit_proposed", **proposal.log_fields(), model_version=version)
    if args.json:
        print(json.dumps([proposal.to_dict() for proposal in proposals], indent=2))
        return 0
    wanted = [p for p in proposals if p.proposed]
    print(f"model {version}: {len(wanted)} of {len(proposals)} classes proposed for a refit")
    for proposal in proposals:
        mark = "REFIT" if proposal.proposed else "wait"
        kind = "cold start" if proposal.cold_start else "fitted"
        print(f"  {mark:5} {proposal.product_class} ({kind}): {proposal.reason}")
        if proposal.command:
            print(f"        {proposal.command}")
    return 0
