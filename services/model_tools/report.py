"""``lineguard evaluate``'s report as readable lines (the same numbers as its ``--json`` line)."""

from __future__ import annotations

from typing import Any


def class_lines(name: str, m: dict[str, Any]) -> list[str]:
    """One class's (or the mean's) evaluation as a few readable lines."""
    excluded = m["n_excluded_trained_on"]
    lines = [
        f"{name}: {m['n_good']} good, {m['n_defect']} defective test images"
        + (f" ({excluded} the model was trained on left out)" if excluded else "")
        + (
            f"; {m['n_defect_without_mask']} defective without a mask (no pixel metrics)"
            if m["n_defect_without_mask"]
            else ""
        ),
        f"  image AUROC {_fmt(m['image_auroc'])}, pixel AUROC {_fmt(m['pixel_auroc'])}, "
        f"AUPRO {_fmt(m['aupro'])}, F1-max {_fmt(m['f1_max'])}",
    ]
    if "threshold" in m:
        target, low_high = m["target_false_reject_rate"], m["false_reject_rate_ci95"]
        lines.append(
            f"  at the calibrated threshold {_fmt(m['threshold'])}: false rejects "
            f"{_pct(m['false_reject_rate'])} (target {_pct(target)}, calibration error "
            f"{_points(m['calibration_error'])}; 95% interval {_pct(low_high[0])}-{_pct(low_high[1])}), "
            f"escapes {_pct(m['escape_rate'])}"
        )
        by_type = ", ".join(
            f"{kind} {_pct(v['rate'])} ({v['escaped']}/{v['n']})" for kind, v in m["escapes_by_type"].items()
        )
        if by_type:
            lines.append(f"  escapes by defect type: {by_type}")
    else:
        lines.append(
            f"  at the calibrated thresholds: false rejects {_pct(m['false_reject_rate'])}, "
            f"calibration error {_points(m['calibration_error'])}, escapes {_pct(m['escape_rate'])}"
        )
    tpr = m["tpr_at_fpr"]
    lines.append(
        "  true-positive rate at 0.1% / 1% / 5% false rejects (threshold set on these test normals): "
        + " / ".join(_fmt(tpr[key]) for key in ("0.001", "0.01", "0.05"))
    )
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _pct(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, float) else str(value)


def _points(value: Any) -> str:
    return f"{100 * value:+.2f} points" if isinstance(value, float) else str(value)
