"""Refit proposals: which classes of a model have collected enough confirmed normals to be refitted.

A cold-start (few-shot) class serves `review` verdicts until enough confirmed normal images are
fitted into its model (``calibration.cold_start``). Confirmed normals arrive as image files in
MVTec layout, ``DIR/<class>/train/good/``: frames operators marked good (``lineguard labels
export --out``) and passes sampled far below the threshold (``--collect-normals STAGING``). A class
is proposed for a refit when the folder holds at least as many images as it needs and more than
its model was fitted with; the proposal names the command that does the refit. Running the refit,
shadow scoring and promotion are separate, deliberate steps (docs/operations.md, "Cold start").

Plain functions on files: no Kafka, no torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared.engine.dataset import IMAGE_SUFFIXES
from shared.errors import ConfigError


@dataclass(frozen=True)
class RefitProposal:
    product_class: str
    cold_start: bool  # a few-shot class (its verdicts are `review` until enough confirmed normals)
    confirmed_normals: int  # distinct confirmed normal images found now
    fitted_confirmed: int  # confirmed normals its model was fitted with
    needed: int | None  # how many make a refit worth proposing; None: no rule for this class
    proposed: bool
    reason: str
    command: str | None  # the refit to run, when proposed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def log_fields(self) -> dict[str, Any]:
        """The class and its counts, as a ``refit_proposed`` line gives them."""
        return {
            "product_class": self.product_class,
            "confirmed_normals": self.confirmed_normals,
            "needed": self.needed,
        }


def confirmed_normal_files(folder: Path, product_class: str) -> list[Path]:
    """The distinct (by content) images in ``folder/<class>/train/good/``."""
    good = folder / product_class / "train" / "good"
    if not good.is_dir():
        return []
    seen: set[str] = set()
    found: list[Path] = []
    for path in sorted(good.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest not in seen:  # one frame saved twice counts once
                seen.add(digest)
                found.append(path)
    return found


def propose_refits(
    manifest: dict[str, Any],
    model_dir: Path,
    folder: Path,
    *,
    review_until: int | None = None,
    min_normals: int | None = None,
) -> list[RefitProposal]:
    """One entry per class of the (verified) ``manifest``.

    ``review_until``: the scorer's cold-start setting (None: each class's manifest); a cold-start
    class needs that many. ``min_normals``: a plain class needs this many (None: plain classes are
    listed, never proposed).
    """
    if review_until is not None and review_until < 0:
        raise ConfigError("the number of confirmed normals must be >= 0")
    if min_normals is not None and min_normals < 1:
        raise ConfigError("--min-normals must be >= 1")
    if not folder.is_dir():
        raise ConfigError(f"confirmed-normals folder {folder} does not exist")
    version = str(manifest.get("model_version", model_dir.name))
    proposals = []
    for entry in manifest["classes"]:
        name = str(entry["name"])
        found = len(confirmed_normal_files(folder, name))
        cold = entry.get("calibration", {}).get("cold_start")
        if cold:
            fitted = int(cold["confirmed_normals"])
            needed: int | None = int(cold["review_until_confirmed"]) if review_until is None else review_until
            command = (
                f"lineguard fit --data TRAINING_DATA --class {name} --shots {cold['shots']} "
                f"--confirmed-normals {folder} --out models/{name}-refit"
            )
        else:
            fitted = 0
            needed = min_normals
            # The class's training images and the confirmed normals, copied into one train/good.
            command = f"lineguard fit --data TRAINING_DATA --class {name} --out models/{name}-refit"
        if needed is None:
            proposed, reason = False, "a fully fitted class: give --min-normals to propose refits for it"
        elif found < needed:
            proposed, reason = False, f"{found} of {needed} confirmed normals"
        elif found <= fitted:
            proposed = False
            reason = f"no confirmed normals beyond the {fitted} model {version} was fitted with"
        else:
            proposed = True
            gate = "; its verdicts are `review` until then" if cold and fitted < needed else ""
            reason = f"{found} confirmed normals (needs {needed}, model {version} has {fitted}){gate}"
        proposals.append(
            RefitProposal(
                name, bool(cold), found, fitted, needed, proposed, reason, command if proposed else None
            )
        )
    return proposals
