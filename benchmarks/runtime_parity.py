"""Do the faster backbone runtimes give the same verdicts? Parity with fp32 torch on real data.

    .venv/bin/python -m benchmarks.runtime_parity --data ../shared/datasets/magnetic_tile

Fits one model the way `lineguard fit` does (efficientnet_lite0, real weights, 224 px, its default
bank), with today's torch path as the reference (fp32, NCHW), and includes its ONNX export. Then
scores every test image with each runtime variant and compares with the reference: image AUROC,
the share of identical decisions at the calibrated threshold, the largest difference of the
normalised score (0.5 = threshold) and of the raw score, and images/s of the whole
``score_batch`` (batch 8). ``--model DIR`` reuses a model saved by an earlier run (``--save``).
bf16 variants (``--bf16``) are emulated on CPUs without AVX512-BF16/AMX: slow, but the numbers
they give are the ones native bf16 gives. Prints one JSON object at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import print_report, print_row
from shared.engine.config import FitConfig, RuntimeOptions
from shared.engine.dataset import discover
from shared.engine.fitting import fit_model
from shared.engine.images import load_image_file
from shared.engine.metrics import auroc
from shared.engine.persistence import load_model, save_model
from shared.engine.runtimes import cpu_flags

VARIANTS = {
    "torch fp32 nchw": RuntimeOptions(runtime="torch", channels_last=False),  # the reference
    "torch fp32 channels-last": RuntimeOptions(runtime="torch"),
    "openvino fp32": RuntimeOptions(runtime="openvino"),
    "onnx fp32": RuntimeOptions(runtime="onnx"),
}
BF16_VARIANTS = {
    "torch bf16 channels-last": RuntimeOptions(runtime="torch", precision="bf16"),
    "openvino bf16": RuntimeOptions(runtime="openvino", precision="bf16"),
}
REFERENCE = "torch fp32 nchw"


def score_all(model_dir: Path, options: RuntimeOptions, images: list[np.ndarray], batch: int) -> dict:
    model = load_model(model_dir, options=options)
    model.score_batch(images[:batch])  # warm-up
    raw, score, decisions = [], [], []
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        for result in model.score_batch(images[start : start + batch]):
            raw.append(result.raw_score)
            score.append(result.score)
            decisions.append(str(result.decision))
    seconds = time.perf_counter() - started
    return {
        "runtime": model.extractor.runtime,
        "precision": model.extractor.backend.precision,
        "raw": np.array(raw),
        "score": np.array(score),
        "decisions": decisions,
        "images_per_s": len(images) / seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="MVTec-layout folder (one class)")
    parser.add_argument("--model", type=Path, help="a model saved by an earlier run (skips fitting)")
    parser.add_argument("--save", type=Path, help="keep the fitted model here")
    parser.add_argument("--bank-size", type=int, default=FitConfig().bank_size)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="also bf16 (torch autocast, OpenVINO hint)")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=[*VARIANTS, *BF16_VARIANTS], help="variants to leave out"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    (found,) = discover(args.data, None)
    report: dict[str, object] = {
        "machine": f"{platform.machine()}, {args.threads} threads, load average {os.getloadavg()[0]:.1f} "
        f"at start, native bf16: {bool(cpu_flags() & {'avx512_bf16', 'amx_bf16'})}",
        "data": str(args.data),
        "n_train": len(found.train),
        "n_test": len(found.test),
    }
    with tempfile.TemporaryDirectory() as folder:
        model_dir = args.model
        if model_dir is None:
            started = time.perf_counter()
            model = fit_model(
                {found.name: list(found.train)},
                FitConfig(bank_size=args.bank_size),
                options=VARIANTS[REFERENCE],
                export=True,
            )
            report["fit_seconds"] = round(time.perf_counter() - started, 1)
            model_dir = args.save or Path(folder) / "model"
            save_model(model, model_dir, overwrite=True)
            del model
        images = [load_image_file(sample.path) for sample in found.test]
        labels = np.array([sample.is_defect for sample in found.test])
        variants = {**VARIANTS, **(BF16_VARIANTS if args.bf16 else {})}
        variants = {name: v for name, v in variants.items() if name == REFERENCE or name not in args.skip}
        outcomes = {}
        for name, options in variants.items():
            outcomes[name] = score_all(model_dir, options, images, args.batch)
            print(name, f"{outcomes[name]['images_per_s']:.1f} images/s", flush=True)
    reference = outcomes[REFERENCE]
    results = {}
    reference_auroc = auroc(labels, reference["raw"])
    for name, outcome in outcomes.items():
        same = np.mean([a == b for a, b in zip(outcome["decisions"], reference["decisions"], strict=True)])
        results[name] = {
            "runs_as": f"{outcome['runtime']} {outcome['precision']}",
            "image_auroc": round(auroc(labels, outcome["raw"]), 4),
            "auroc_minus_reference": round(auroc(labels, outcome["raw"]) - reference_auroc, 4),
            "identical_decisions": round(float(same), 4),
            "decisions_differing": sum(
                a != b for a, b in zip(outcome["decisions"], reference["decisions"], strict=True)
            ),
            "max_score_diff": float(np.abs(outcome["score"] - reference["score"]).max()),
            "max_raw_score_diff": float(np.abs(outcome["raw"] - reference["raw"]).max()),
            "images_per_s": round(outcome["images_per_s"], 1),
        }
        print_row(name, results[name])
    report["reference"] = REFERENCE
    report["results"] = results
    report["load_average_at_end"] = round(os.getloadavg()[0], 1)
    return print_report(report)


if __name__ == "__main__":
    sys.exit(main())
