"""Which classes are proposed for a refit, from a manifest and a folder of confirmed normals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.model_tools.proposals import propose_refits
from shared.errors import ConfigError


def manifest(*classes: dict[str, Any]) -> dict[str, Any]:
    return {"model_version": "v7", "classes": list(classes)}


def cold(name: str, confirmed: int, needed: int) -> dict[str, Any]:
    cold_start = {"shots": 8, "confirmed_normals": confirmed, "review_until_confirmed": needed}
    return {"name": name, "calibration": {"cold_start": cold_start}}


def confirmed(root: Path, name: str, count: int) -> None:
    good = root / name / "train" / "good"
    good.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (good / f"{i}.png").write_bytes(f"{name} image {i}".encode())
    (good / "notes.txt").write_text("not an image")


def test_a_class_is_proposed_with_enough_new_confirmed_normals_and_only_then(tmp_path: Path) -> None:
    confirmed(tmp_path, "washer", 5)
    confirmed(tmp_path, "bolt", 2)
    confirmed(tmp_path, "refitted", 5)
    found = {
        p.product_class: p
        for p in propose_refits(
            manifest(cold("washer", 0, 5), cold("bolt", 0, 5), cold("refitted", 5, 5), {"name": "plain"}),
            tmp_path / "v7",
            tmp_path,
        )
    }
    assert found["washer"].proposed and found["washer"].command is not None
    assert "--shots 8 --confirmed-normals" in found["washer"].command
    assert "model v7 has 0" in found["washer"].reason
    assert not found["bolt"].proposed and found["bolt"].reason == "2 of 5 confirmed normals"
    assert not found["refitted"].proposed and "beyond the 5" in found["refitted"].reason
    assert not found["plain"].proposed and found["plain"].needed is None and found["plain"].command is None


def test_the_scorer_setting_and_min_normals_set_the_bar(tmp_path: Path) -> None:
    confirmed(tmp_path, "washer", 5)
    confirmed(tmp_path, "plain", 5)
    classes = manifest(cold("washer", 0, 50), {"name": "plain"})
    by_setting = propose_refits(classes, tmp_path, tmp_path, review_until=5, min_normals=6)
    assert [(p.product_class, p.proposed, p.needed) for p in by_setting] == [
        ("washer", True, 5),
        ("plain", False, 6),
    ]
    plain = propose_refits(classes, tmp_path, tmp_path, min_normals=5)[1]
    assert plain.proposed and plain.command is not None and "--class plain" in plain.command
    with pytest.raises(ConfigError):
        propose_refits(classes, tmp_path, tmp_path, review_until=-1)
    with pytest.raises(ConfigError):
        propose_refits(classes, tmp_path, tmp_path / "absent")


def test_a_proposal_logs_its_class_and_counts(tmp_path: Path) -> None:
    confirmed(tmp_path, "washer", 5)
    (proposal,) = propose_refits(manifest(cold("washer", 0, 5)), tmp_path / "v7", tmp_path)
    assert proposal.log_fields() == {"product_class": "washer", "confirmed_normals": 5, "needed": 5}
