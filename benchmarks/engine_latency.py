"""CPU latency and throughput of ``InspectionModel.score_batch`` per backbone and bank size.

    .venv/bin/python -m benchmarks.engine_latency

DINOv2 ViTs with random weights (timing does not depend on the weight values), 224 px input.
For each backbone: per-image latency at batch 1, throughput at batch 8, and the share of time in
the k-NN search with a 10k and a 100k patch bank, for each index kind asked for (by default the
exact ``flat`` and ``pca-refine``, whose share of exactly found neighbours on held-out images is
reported too); then routing + scoring with 1 and with 20 classes.
The banks are built from the backbone's real patch features of synthetic images, resampled with
noise to the wanted size (search cost depends on bank size and dimension, not on content).
Prints one JSON object at the end.

With ``--runtimes``, it compares instead the backbone runtimes on one backbone (efficientnet_lite0
with its real weights by default), ``score_batch`` at batch 8 with a 10k bank, by ``--workers``
threads at once (the scorer's model workers) for ``--seconds`` each, in ``--rounds`` rounds; every
round runs the reference (today's torch path: fp32, NCHW) before and after the others, and each
candidate's ratio is to the mean of those two, the result the median ratio over the rounds:

    .venv/bin/python -m benchmarks.engine_latency --runtimes torch-nchw torch openvino onnx \
        --workers 2 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import print_report, print_row, timed_threads
from shared.engine.class_model import ClassModel
from shared.engine.config import INDEX_KINDS, FitConfig, RuntimeOptions
from shared.engine.fitting import fit_model
from shared.engine.model import InspectionModel
from shared.engine.persistence import load_model, save_model
from shared.engine.scorers.index import KnnBank, build_index, set_search_threads
from shared.engine.scorers.knn import KnnScorer
from shared.synthetic import SYNTHETIC_CLASSES, render_sample

TIMM_NAMES = {"dinov2_vits14": "vit_small_patch14_dinov2", "dinov2_vitb14": "vit_base_patch14_dinov2"}


def random_weights(backbone: str, folder: Path) -> Path:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(TIMM_NAMES[backbone], pretrained=False)
    path = folder / f"{backbone}_random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def resampled_bank(features: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    rows = rng.integers(0, len(features), size)
    noise = rng.normal(0, features.std() * 0.05, (size, features.shape[1])).astype(np.float32)
    return features[rows] + noise


def time_scoring(
    model: InspectionModel, images: list[np.ndarray], batch: int, repeats: int
) -> dict[str, float]:
    model.score_batch(images[:batch])  # warm-up
    timings: dict[str, float] = {}
    began = time.perf_counter()
    count = 0
    for _ in range(repeats):
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            model.score_batch(chunk, timings=timings)
            count += len(chunk)
    total = time.perf_counter() - began
    return {
        "ms_per_image": round(total / count * 1000, 2),
        "images_per_s": round(count / total, 2),
        "backbone_ms": round(timings["backbone"] / count * 1000, 2),
        "knn_ms": round(timings["knn"] / count * 1000, 2),
        "postprocess_ms": round(timings["postprocess"] / count * 1000, 2),
        "knn_share_of_backbone": round(timings["knn"] / timings["backbone"], 3),
    }


RUNTIME_VARIANTS = {
    "torch-nchw": RuntimeOptions(runtime="torch", channels_last=False),  # today's path: the reference
    "torch": RuntimeOptions(runtime="torch"),  # channels-last
    "torch-bf16": RuntimeOptions(runtime="torch", precision="bf16"),
    "openvino": RuntimeOptions(runtime="openvino"),
    "openvino-bf16": RuntimeOptions(runtime="openvino", precision="bf16"),
    "onnx": RuntimeOptions(runtime="onnx"),
}


def throughput(
    model: InspectionModel, images: list[np.ndarray], batch: int, workers: int, seconds: float
) -> dict[str, float]:
    """Images/s of ``workers`` threads each scoring whole batches for ``seconds``, and the backbone's
    share of one image's time."""
    chunks = [images[i : i + batch] for i in range(0, len(images), batch)]
    for chunk in chunks[:workers]:
        model.score_batch(chunk)  # warm-up (each worker's first call initialises lazily)
    counts = [0] * workers
    timings = [dict[str, float]() for _ in range(workers)]
    deadline = time.perf_counter() + seconds

    def work(worker: int) -> None:
        turn = worker
        while time.perf_counter() < deadline:
            chunk = chunks[turn % len(chunks)]
            model.score_batch(chunk, timings=timings[worker])
            counts[worker] += len(chunk)
            turn += workers

    elapsed = timed_threads(work, range(workers))
    total = sum(counts)
    backbone = sum(t.get("backbone", 0.0) for t in timings)
    return {
        "images_per_s": total / elapsed,
        "backbone_ms_per_image": backbone / total * 1000,
        "knn_ms_per_image": sum(t.get("knn", 0.0) for t in timings) / total * 1000,
    }


def compare_runtimes(args: argparse.Namespace, images: list[np.ndarray], folder: Path) -> dict[str, object]:
    backbone = args.backbones[0]
    weights = str(random_weights(backbone, folder)) if backbone in TIMM_NAMES else None
    rng = np.random.default_rng(1)
    config = FitConfig(backbone=backbone, weights=weights, input_size=224, bank_size=2000)
    train = {"fabric": [render_sample("fabric", rng, 224)[0] for _ in range(6)]}
    fitted = fit_model(train, config, options=RUNTIME_VARIANTS["torch-nchw"], export=True)
    features, _ = fitted.embed(images[:8])
    bank = resampled_bank(features.reshape(-1, features.shape[-1]), 10_000, rng)
    fitted.class_models[0].scorer = KnnScorer(KnnBank(build_index(bank, "flat"), 1))
    save_model(fitted, folder / "model")
    options = {"torch_threads": args.threads, "model_workers": args.workers}
    models = {
        name: load_model(folder / "model", options=replace(RUNTIME_VARIANTS[name], **options))
        for name in ["torch-nchw", *[r for r in args.runtimes if r != "torch-nchw"]]
    }
    runs_as = {name: f"{m.extractor.runtime} {m.extractor.backend.precision}" for name, m in models.items()}
    rounds: list[dict[str, dict[str, float]]] = []
    for index in range(args.rounds):
        def run(name: str) -> dict[str, float]:
            return throughput(models[name], images, 8, args.workers, args.seconds)

        measured = {"torch-nchw before": run("torch-nchw")}
        for name in models:
            if name != "torch-nchw":
                measured[name] = run(name)
        measured["torch-nchw after"] = run("torch-nchw")
        measured["load average"] = {"1 min": os.getloadavg()[0]}
        rounds.append(measured)
        print_row(f"round {index + 1}", measured)
    summary: dict[str, object] = {}
    for name in models:
        if name == "torch-nchw":
            continue
        ratios = [
            r[name]["images_per_s"]
            / ((r["torch-nchw before"]["images_per_s"] + r["torch-nchw after"]["images_per_s"]) / 2)
            for r in rounds
        ]
        summary[name] = {
            "runs_as": runs_as[name],
            "images_per_s_median": round(float(np.median([r[name]["images_per_s"] for r in rounds])), 1),
            "backbone_ms_median": round(
                float(np.median([r[name]["backbone_ms_per_image"] for r in rounds])), 2
            ),
            "ratio_to_torch_nchw_per_round": [round(x, 2) for x in ratios],
            "ratio_to_torch_nchw_median": round(float(np.median(ratios)), 2),
        }
    reference = [r[k]["images_per_s"] for r in rounds for k in ("torch-nchw before", "torch-nchw after")]
    summary["torch-nchw"] = {
        "runs_as": runs_as["torch-nchw"],
        "images_per_s_median": round(float(np.median(reference)), 1),
        "backbone_ms_median": round(
            float(np.median([r["torch-nchw before"]["backbone_ms_per_image"] for r in rounds])), 2
        ),
    }
    return {"backbone": backbone, "workers": args.workers, "threads": args.threads, "summary": summary}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["dinov2_vits14", "dinov2_vitb14"])
    parser.add_argument("--banks", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--search-threads", type=int, default=2, help="faiss OpenMP threads")
    parser.add_argument("--indexes", nargs="+", default=["flat", "pca-refine"], choices=INDEX_KINDS)
    parser.add_argument("--reduced-dims", type=int, default=128, help="pca-refine candidate dims")
    parser.add_argument("--refine-factor", type=int, default=8, help="pca-refine candidates per neighbour")
    parser.add_argument(
        "--runtimes", nargs="+", choices=RUNTIME_VARIANTS, help="compare backbone runtimes (see above)"
    )
    parser.add_argument("--workers", type=int, default=1, help="--runtimes: threads scoring at once")
    parser.add_argument("--rounds", type=int, default=3, help="--runtimes: bracketed rounds")
    parser.add_argument("--seconds", type=float, default=8.0, help="--runtimes: per measurement")
    args = parser.parse_args()
    if args.runtimes and "--backbones" not in sys.argv:
        args.backbones = ["efficientnet_lite0"]
    torch.set_num_threads(args.threads)
    set_search_threads(args.search_threads)
    rng = np.random.default_rng(0)
    images = [render_sample(SYNTHETIC_CLASSES[i % 4], rng, 224)[0] for i in range(args.images)]
    report: dict[str, object] = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{args.search_threads} faiss threads",
        "input_size": 224,
        "results": {},
    }
    results: dict[str, object] = {}
    if args.runtimes:
        report["load_average_at_start"] = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as folder:
            report["runtimes"] = compare_runtimes(args, images, Path(folder))
        report["load_average_at_end"] = os.getloadavg()[0]
        return print_report(report)
    with tempfile.TemporaryDirectory() as folder:
        for backbone in args.backbones:
            weights = random_weights(backbone, Path(folder))
            config = FitConfig(backbone=backbone, weights=str(weights), input_size=224, bank_size=2000)
            train = {"fabric": [render_sample("fabric", rng, 224)[0] for _ in range(6)]}
            model = fit_model(train, config)
            features, _ = model.embed(images[:8])
            pool = features.reshape(-1, features.shape[-1])
            held_out, _ = model.embed(images[8:])  # queries the bank was not built from
            held_out = held_out.reshape(-1, held_out.shape[-1])
            for bank_size in args.banks:
                bank = resampled_bank(pool, bank_size, rng)
                exact = KnnBank(build_index(bank, "flat"), 1)
                exact_dist, _ = exact.search(held_out, 1)
                for kind in args.indexes:
                    scorer = KnnBank(
                        build_index(
                            bank,
                            kind,
                            reduced_dims=args.reduced_dims,
                            refine_factor=args.refine_factor,
                        ),
                        1,
                    )
                    model.class_models[0].scorer = KnnScorer(scorer)
                    entry: dict[str, object] = {
                        "batch_1": time_scoring(model, images[: max(4, args.images // 2)], 1, 1),
                        "batch_8": time_scoring(model, images, 8, 1),
                    }
                    if kind != "flat":
                        dist, _ = scorer.search(held_out, 1)
                        relative = (dist - exact_dist) / np.maximum(exact_dist, 1e-6)
                        entry["held_out_1nn_exact_share"] = round(
                            float(np.isclose(dist, exact_dist, rtol=1e-4).mean()), 4
                        )
                        entry["held_out_score_error_mean"] = round(float(relative.mean()), 5)
                        entry["held_out_score_error_max"] = round(float(relative.max()), 4)
                    results[f"{backbone} bank {bank_size} {kind}"] = entry
                    print_row(f"{backbone} {bank_size} {kind}", entry)
            if backbone == args.backbones[0]:
                # Routing cost vs number of classes: 20 classes, each with its own 10k bank.
                base = model.class_models[0]
                base.scorer = KnnScorer(KnnBank(build_index(resampled_bank(pool, 10_000, rng), "flat"), 1))
                one = InspectionModel(
                    model.config,
                    model.extractor,
                    [base],
                    version="bench",
                    weights_sha256=None,
                    weights_path=None,
                    metadata={},
                )
                classes = [base]
                for i in range(19):
                    prototype = rng.normal(size=base.prototype.shape).astype(np.float32)
                    bank = resampled_bank(pool, 10_000, rng)
                    classes.append(
                        ClassModel(
                            f"class{i:02d}",
                            KnnScorer(KnnBank(build_index(bank, "flat"), 1)),
                            base.normaliser,
                            base.unknown_threshold,
                            prototype,
                            {},
                        )
                    )
                twenty = InspectionModel(
                    model.config,
                    model.extractor,
                    classes,
                    version="bench",
                    weights_sha256=None,
                    weights_path=None,
                    metadata={},
                )
                fabric = [render_sample("fabric", rng, 224)[0] for _ in range(args.images)]
                for name, candidate in (("1 class", one), ("20 classes", twenty)):
                    routed = {r.product_class for r in candidate.score_batch(fabric[:4])}
                    routing_entry = {
                        "batch_8": time_scoring(candidate, fabric, 8, 1),
                        "routed_to": sorted(routed),
                    }
                    results[f"{backbone} routing {name}"] = routing_entry
                    print_row(f"{backbone} {name}", routing_entry)
    report["results"] = results
    return print_report(report)


if __name__ == "__main__":
    sys.exit(main())
