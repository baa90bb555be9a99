import io

import numpy as np
from PIL import Image

from services.explainer.pictures import make_pictures
from shared.messages.anomaly_map import overlay
from shared.messages.schemas import RegionMsg


def test_pictures_crop_the_region_and_overlay_marks_the_heat() -> None:
    frame = np.full((100, 200, 3), 100, np.uint8)
    frame[40:50, 150:170] = 255
    heat = np.zeros((50, 100), np.uint8)  # half size: resized onto the frame
    heat[20:25, 75:85] = 255
    region = RegionMsg(x=150, y=40, width=20, height=10, score=0.9, area_fraction=0.01)
    pictures = make_pictures(frame, heat, region, frame_max_side=100, crop_max_side=512)
    box = pictures.crop_box
    assert box.x0 <= 150 and box.x1 >= 170 and box.y0 <= 40 and box.y1 >= 50
    with Image.open(io.BytesIO(pictures.frame)) as image:
        assert image.size == (100, 50)  # downscaled to frame_max_side
    with Image.open(io.BytesIO(pictures.crop)) as image:
        assert image.size == (box.width, box.height)
    blended = overlay(frame, heat)
    assert blended.shape == frame.shape
    assert abs(int(blended[45, 160, 0]) - 255) < 60 and blended[45, 160, 2] < 200  # red over the hot spot
    assert np.abs(blended[5, 5].astype(int) - 100).max() < 40  # cool areas stay close to the part
    no_region = make_pictures(frame, heat, None)
    assert no_region.crop_box.x0 <= 160 <= no_region.crop_box.x1  # centred on the heat peak
