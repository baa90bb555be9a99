"""Which normal scores and which rule put the threshold where it rejects the target share of new
normal images: one 20 % holdout vs out-of-fold scores of all normals; the order statistic vs
fitted tails.

    nice -n 10 .venv/bin/python -m benchmarks.calibration_rules --model M --data DATA

``M`` is a model fitted with out-of-fold calibration (``--calibration-folds K``, K >= 2): its
manifest holds every normal image's out-of-fold score. Fold 0 of the same split is the engine's
single holdout (same seed, same 20 % when K = 5), so both score sets come from the same model and
every threshold is applied to the same test scores: only the calibration differs. Rules:
``order_statistic`` (the engine's ``threshold_at_frr``), ``gpd_tail`` (a generalised Pareto
fitted to the top 10 % of scores, peaks over threshold), ``lognormal`` (a log-normal fitted to all
scores). The oracle threshold (1 % of the test normals themselves) is shown for scale only.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import sys
from statistics import NormalDist

import numpy as np
import torch

from benchmarks.harness import print_report
from shared.engine.backbones import file_sha256
from shared.engine.calibration import out_of_fold, threshold_at_frr
from shared.engine.dataset import discover
from shared.engine.evaluation import trained_on
from shared.engine.images import load_image_file
from shared.engine.persistence import load_model


def gpd_tail(scores: np.ndarray, target: float, tail: float = 0.1) -> float:
    from scipy.stats import genpareto

    ordered = np.sort(scores)
    start = float(np.quantile(ordered, 1.0 - tail))
    excess = ordered[ordered > start] - start
    if len(excess) < 10:
        return float(np.quantile(ordered, 1.0 - target, method="higher"))
    shape, _, scale = genpareto.fit(excess, floc=0.0)
    shape = float(np.clip(shape, -0.5, 0.5))  # a few dozen points must not extrapolate wildly
    return float(start + genpareto.ppf(1.0 - target / tail, shape, loc=0.0, scale=scale))


def lognormal(scores: np.ndarray, target: float) -> float:
    logs = np.log(np.maximum(scores, 1e-12))
    return float(np.exp(logs.mean() + NormalDist().inv_cdf(1.0 - target) * logs.std(ddof=1)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="../shared/datasets/magnetic_tile")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    (data,) = discover(args.data)
    class_model = model.class_models[model.classes.index(data.name)]
    calibration = class_model.calibration
    if calibration.get("folds", 1) < 2:
        raise SystemExit("the model was calibrated on one holdout; fit it with --calibration-folds 5")
    target = float(calibration["target_frr"])
    oof = np.asarray(calibration["heldout_scores"], dtype=np.float64)
    holdout = oof[out_of_fold(len(oof), int(calibration["folds"]), model.config.seed)[0]]
    trained = trained_on(model) or set()
    labels, scores = [], []
    for sample in data.test:
        if file_sha256(sample.path) in trained:
            continue
        labels.append(sample.is_defect)
        scores.append(model.score_batch([load_image_file(sample.path)])[0].raw_score)
    is_defect = np.array(labels)
    test = np.array(scores)
    normal, defect = test[~is_defect], test[is_defect]

    def outcome(threshold: float) -> dict[str, float]:
        return {
            "threshold": round(threshold, 4),
            "false_reject_rate": round(float((normal >= threshold).mean()), 4),
            "escape_rate": round(float((defect < threshold).mean()), 4),
        }

    table: dict[str, dict[str, float]] = {}
    for source, values in ((f"holdout_{len(holdout)}", holdout), (f"out_of_fold_{len(oof)}", oof)):
        table[f"{source}.order_statistic"] = outcome(threshold_at_frr(values, target))
        table[f"{source}.gpd_tail"] = outcome(gpd_tail(values, target))
        table[f"{source}.lognormal"] = outcome(lognormal(values, target))
    allowed = int(np.floor(target * len(normal)))
    oracle = float(np.sort(normal)[len(normal) - allowed - 1])
    table["oracle_test_normals"] = {
        "threshold": round(oracle, 4),
        "false_reject_rate": round(float((normal > oracle).mean()), 4),
        "escape_rate": round(float((defect <= oracle).mean()), 4),
    }
    report = {
        "model": model.version,
        "model_threshold": class_model.threshold,
        "target_frr": target,
        "folds": calibration["folds"],
        "test_normals": len(normal),
        "test_defects": len(defect),
        "rules": table,
    }
    return print_report(report)


if __name__ == "__main__":
    sys.exit(main())
