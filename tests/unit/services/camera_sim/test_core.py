"""The simulator's plan: deterministic, evenly spread over cameras, every bad kind injected."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.camera_sim.core import (
    BAD_KINDS,
    DEFECT,
    NORMAL,
    SimStats,
    camera_ids,
    frame_plan,
    scan_mvtec,
    synthetic_samples,
    tick_time,
)


def test_plan_is_deterministic_for_a_seed_and_run_id() -> None:
    a = list(frame_plan(5, count=40, cameras=["c0", "c1"], bad_rate=0.3, seed=7, run_id="r"))
    b = list(frame_plan(5, count=40, cameras=["c0", "c1"], bad_rate=0.3, seed=7, run_id="r"))
    c = list(frame_plan(5, count=40, cameras=["c0", "c1"], bad_rate=0.3, seed=8, run_id="r"))
    assert a == b
    assert a != c


def test_frame_ids_are_unique_and_cameras_take_turns() -> None:
    plan = list(frame_plan(3, count=12, cameras=camera_ids("cam", 3), seed=1))
    assert len({p.frame_id for p in plan}) == 12
    assert [p.camera_id for p in plan[:6]] == ["cam-0", "cam-1", "cam-2"] * 2
    assert Counter(p.camera_id for p in plan) == {"cam-0": 4, "cam-1": 4, "cam-2": 4}


def test_every_sample_is_used_once_per_pass() -> None:
    plan = list(frame_plan(4, count=8, cameras=["c"], seed=3))
    assert sorted(p.sample_index for p in plan[:4]) == [0, 1, 2, 3]
    assert sorted(p.sample_index for p in plan[4:]) == [0, 1, 2, 3]


def test_bad_frames_follow_the_rate_and_cover_every_kind() -> None:
    plan = list(frame_plan(10, count=2000, cameras=["c"], bad_rate=0.1, seed=0))
    bad = [p.bad_kind for p in plan if p.bad_kind]
    assert 150 < len(bad) < 250
    assert set(bad) == set(BAD_KINDS)
    assert not any(p.bad_kind for p in frame_plan(10, count=100, cameras=["c"], bad_rate=0.0))
    assert all(
        p.bad_kind == "undecodable"
        for p in frame_plan(10, count=20, cameras=["c"], bad_rate=1.0, bad_kinds=["undecodable"])
    )


def test_unbounded_plan_keeps_going() -> None:
    plan = frame_plan(2, count=None, cameras=["c"])
    assert len(list(itertools.islice(plan, 1000))) == 1000


@pytest.mark.parametrize(
    "kwargs",
    [{"bad_rate": 1.5}, {"bad_kinds": ["nonsense"]}, {"bad_kinds": []}, {"count": -1}],
)
def test_plan_rejects_bad_arguments(kwargs: dict) -> None:
    args = {"count": 3, "cameras": ["c"], **kwargs}
    with pytest.raises(ValueError):
        list(frame_plan(2, **args))


def test_clock_ticks_are_computed_from_the_start_not_accumulated() -> None:
    assert tick_time(100.0, 0, 4.0) == 100.0
    assert tick_time(100.0, 10, 4.0) == pytest.approx(102.5)
    assert tick_time(0.0, 3_000_000, 30.0) == pytest.approx(100_000.0)
    with pytest.raises(ValueError):
        tick_time(0.0, 1, 0.0)


def test_synthetic_pool_mixes_products_and_defects() -> None:
    samples = synthetic_samples(["fabric", "washer"], ["scratch", "spot"], pool=20, defect_rate=0.25, seed=1)
    assert len(samples) == 20
    assert Counter(s.label for s in samples) == {NORMAL: 15, DEFECT: 5}
    assert {s.product for s in samples} == {"fabric", "washer"}
    assert all((s.defect_type is None) == (s.label == NORMAL) for s in samples)
    assert len({s.seed for s in samples}) == 20


def _write(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)


def test_scan_mvtec_reads_one_class_or_a_folder_of_classes(tmp_path: Path) -> None:
    for cls in ("tile", "bottle"):
        _write(tmp_path / cls / "test" / "good" / "000.png")
        _write(tmp_path / cls / "test" / "crack" / "001.jpg")
        _write(tmp_path / cls / "train" / "good" / "002.png")
    (tmp_path / "tile" / "test" / "good" / "notes.txt").write_text("not an image")
    samples = scan_mvtec(tmp_path)
    assert len(samples) == 4
    assert {(s.product, s.label, s.defect_type) for s in samples} == {
        ("tile", NORMAL, None),
        ("tile", DEFECT, "crack"),
        ("bottle", NORMAL, None),
        ("bottle", DEFECT, "crack"),
    }
    assert len(scan_mvtec(tmp_path / "tile")) == 2
    with pytest.raises(FileNotFoundError):
        scan_mvtec(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        scan_mvtec(tmp_path / "tile" / "train")


def test_run_stats_summary_is_what_the_finished_line_says() -> None:
    stats = SimStats(sent=10, bad=2, max_behind_s=0.123456, started=5.0, finished=7.50049)
    stats.by_kind["truncated"] = 2
    assert stats.summary() == {
        "sent": 10,
        "bad": 2,
        "bad_by_kind": {"truncated": 2},
        "seconds": 2.5,
        "max_behind_s": 0.1235,
    }
