import numpy as np
import pytest

from services.explainer.geometry import (
    POSITION_CODES,
    WHOLE_PART,
    cell_shares,
    check_location,
    crop_box,
    elongation,
    hot_mask,
    position_code,
    region_position,
)


@pytest.mark.parametrize(
    ("cx", "cy", "code"),
    [
        (0.1, 0.1, "upper left"),
        (0.5, 0.1, "upper middle"),
        (0.9, 0.05, "upper right"),
        (0.1, 0.5, "middle left"),
        (0.5, 0.5, "center"),
        (0.8, 0.5, "middle right"),
        (0.0, 1.0, "lower left"),
        (0.5, 0.99, "lower middle"),
        (1.0, 1.0, "lower right"),
    ],
)
def test_position_code_names_the_grid_cell(cx: float, cy: float, code: str) -> None:
    assert position_code(cx, cy) == code


def test_region_position_uses_the_region_centre() -> None:
    # A region starting in the upper left but centred in the middle is "center".
    assert region_position(40, 40, 80, 80, 160, 160) == "center"
    assert region_position(100, 10, 30, 8, 160, 120) == "upper right"
    with pytest.raises(ValueError):
        region_position(0, 0, 1, 1, 0, 10)


def test_crop_box_adds_context_and_stays_inside_the_image() -> None:
    box = crop_box(100, 10, 30, 8, 160, 120, margin=0.5, min_side=64)
    assert 0 <= box.x0 < 100 and box.x1 <= 160 and box.y0 == 0 and box.y1 <= 120
    assert box.height >= 8 + 28  # grown towards min_side even where the top edge clips it
    assert box.x0 <= 100 - 15 and box.x1 >= 130  # half the width on each side
    tiny = crop_box(50, 50, 2, 2, 200, 200, min_side=64)
    assert tiny.width == 64 and tiny.height == 64
    outside = crop_box(500, 500, 10, 10, 100, 100)
    assert (outside.x0, outside.y0, outside.x1, outside.y1) == (0, 0, 100, 100)


def test_elongation() -> None:
    assert elongation(30, 3) == 10
    assert elongation(5, 5) == 1
    assert elongation(0, 4) == 4


def test_hot_mask_uses_the_threshold_or_the_upper_half_of_a_cool_map() -> None:
    hot = np.zeros((9, 9), np.uint8)
    hot[0, 0] = 200
    hot[1, 1] = 127
    assert hot_mask(hot).sum() == 1
    cool = np.zeros((9, 9), np.uint8)
    cool[4, 4] = 100
    cool[4, 5] = 60
    assert hot_mask(cool).sum() == 2  # 60 >= 100 / 2
    assert hot_mask(np.zeros((3, 3), np.uint8)).sum() == 0
    with pytest.raises(ValueError):
        hot_mask(np.zeros((3,), np.uint8))


def test_cell_shares_sum_to_one_and_locate_the_heat() -> None:
    heat = np.zeros((90, 90), np.uint8)
    heat[0:30, 60:90] = 255  # upper right cell
    heat[60:65, 0:10] = 255  # a little in the lower left
    shares = cell_shares(heat)
    assert set(shares) == set(POSITION_CODES)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["upper right"] == pytest.approx(900 / 950)
    assert shares["center"] == 0


def test_check_location_agrees_with_heat_or_region_and_flags_the_rest() -> None:
    shares = dict.fromkeys(POSITION_CODES, 0.0)
    shares["upper right"] = 0.9
    shares["upper middle"] = 0.1
    agrees = check_location("upper right", shares, ["upper right"])
    assert agrees.agrees and agrees.observed[0] == "upper right"
    # A cell with a region centre agrees even with little heat.
    assert check_location("upper middle", shares, ["upper middle"]).agrees
    wrong = check_location("lower left", shares, ["upper right"])
    assert not wrong.agrees and wrong.observed == ("upper right",)
    assert not check_location("somewhere", shares, []).agrees
    assert not check_location(WHOLE_PART, shares, []).agrees
    spread = dict.fromkeys(POSITION_CODES, 1 / 9)
    assert check_location(WHOLE_PART, spread, []).agrees
