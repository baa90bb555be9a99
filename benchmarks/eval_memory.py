"""Memory and time of ``lineguard evaluate`` on many large images.

    nice -n 10 .venv/bin/python -m benchmarks.eval_memory --images 1000 --size 2048 --work /tmp/evalmem

1. Generates an MVTec-layout class of ``--images`` test frames of ``--size`` x ``--size`` pixels
   (half good, half with dark blob defects and their masks; JPEG frames, PNG masks) plus
   ``--train`` normal frames. The files stay in ``--work`` for reruns.
2. Fits a small model on the normal frames (``lineguard fit``: efficientnet_lite0, real weights).
3. Runs the evaluation (``shared.engine.evaluation.evaluate``, what ``lineguard evaluate`` calls)
   in a fresh process and reports its peak RSS, its RSS every ``--trace-every`` images (flat when
   memory is bounded), and the time per image. The reference, measured in the same process right
   after: scoring alone (decode + ``score_batch``, no metrics) on the first 50 frames.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.harness import print_report

CLASS = "frames"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def frame(rng: np.random.Generator, size: int, defect: bool) -> tuple[np.ndarray, np.ndarray]:
    """A textured grey surface (coarse and fine noise, upsampled) and, for a defect, dark blobs."""
    coarse = Image.fromarray(rng.normal(128, 12, (32, 32)).astype(np.float32)).resize((size, size))
    fine = Image.fromarray(rng.normal(0, 8, (size // 8, size // 8)).astype(np.float32)).resize((size, size))
    surface = np.asarray(coarse) + np.asarray(fine)
    mask = np.zeros((size, size), dtype=bool)
    if defect:
        yy, xx = np.ogrid[:size, :size]
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0.1, 0.9, 2) * size
            ry, rx = rng.uniform(0.01, 0.05, 2) * size
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
        surface = np.where(mask, surface - rng.uniform(40, 80), surface)
    gray = np.clip(surface, 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2), mask


def generate(root: Path, n_images: int, n_train: int, size: int) -> None:
    marker = root / "generated.json"
    wanted = {"images": n_images, "train": n_train, "size": size}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return
    rng = np.random.default_rng(0)
    base = root / CLASS
    folders = [
        base / "train" / "good",
        base / "test" / "good",
        base / "test" / "blob",
        base / "ground_truth" / "blob",
    ]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(frame(rng, size, False)[0]).save(base / "train" / "good" / f"{i:04d}.jpg", quality=90)
    for i in range(n_images):
        defect = i % 2 == 1
        pixels, mask = frame(rng, size, defect)
        kind = "blob" if defect else "good"
        Image.fromarray(pixels).save(base / "test" / kind / f"{i:04d}.jpg", quality=90)
        if defect:
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                base / "ground_truth" / "blob" / f"{i:04d}_mask.png"
            )
    marker.write_text(json.dumps(wanted))


def measure(model_dir: Path, data: Path, trace_every: int) -> dict[str, object]:
    import torch

    from shared.engine.dataset import discover
    from shared.engine.evaluation import evaluate
    from shared.engine.images import load_image_file
    from shared.engine.persistence import load_model

    torch.set_num_threads(1)
    model = load_model(model_dir)
    found = discover(data)
    trace: list[tuple[int, float]] = []
    done = 0

    def progress(count: int) -> None:
        nonlocal done
        before = done
        done += count
        if done // trace_every > before // trace_every or done == 1:
            trace.append((done, round(rss_mib(), 1)))

    began = time.perf_counter()
    report = evaluate(model, found, progress=progress)
    seconds = time.perf_counter() - began
    peak = peak_rss_mib()
    sample = found[0].test[:50]
    began = time.perf_counter()
    for test_sample in sample:
        model.score_batch([load_image_file(test_sample.path)])
    scoring_ms = 1000 * (time.perf_counter() - began) / len(sample)
    metrics = report["classes"][CLASS]
    return {
        "images": done,
        "peak_rss_mib": round(peak),
        "rss_trace_mib": trace,
        "ms_per_image": round(1000 * seconds / done, 1),
        "reference_scoring_only_ms_per_image": round(scoring_ms, 1),
        "metrics_overhead_ratio": round(1000 * seconds / done / scoring_ms, 2),
        "pixel_auroc": metrics["pixel_auroc"],
        "aupro": metrics["aupro"],
        "image_auroc": metrics["image_auroc"],
        "latency_ms": report["latency_ms"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--train", type=int, default=12)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lineguard-evalmem"))
    parser.add_argument("--trace-every", type=int, default=50)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: the measured process
    args = parser.parse_args()
    data = args.work / f"data-{args.images}-{args.size}"
    if args.measure is not None:
        return print_report(measure(args.measure, data, args.trace_every))
    began = time.perf_counter()
    generate(data, args.images, args.train, args.size)
    generate_s = time.perf_counter() - began
    model_dir = args.work / f"model-{args.size}"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    if not (model_dir / "manifest.json").is_file():
        fit = [sys.executable, "-m", "services.cli", "fit", "--data", str(data / CLASS), "--threads", "1"]
        fit += ["--bank-size", "2000", "--calibration-folds", "3", "--out", str(model_dir), "--force"]
        subprocess.run(fit, check=True, env=env, stdout=subprocess.DEVNULL)
    child = [
        sys.executable,
        "-m",
        "benchmarks.eval_memory",
        "--images",
        str(args.images),
        "--size",
        str(args.size),
    ]
    child += ["--work", str(args.work), "--trace-every", str(args.trace_every), "--measure", str(model_dir)]
    measured = json.loads(subprocess.run(child, check=True, env=env, capture_output=True, text=True).stdout)
    report = {
        "frames": f"{args.images} x {args.size}x{args.size} (half defective)",
        "generate_seconds": round(generate_s, 1),
        **measured,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_end": round(os.getloadavg()[0], 1),
    }
    return print_report(report)


if __name__ == "__main__":
    sys.exit(main())
