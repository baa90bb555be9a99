"""The anomaly map's wire encoding: 8-bit levels with the class threshold at 128."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shared.messages.anomaly_map import THRESHOLD_LEVEL, decode_anomaly_map, encode_anomaly_map


def test_anomaly_map_png_is_8_bit_with_the_threshold_at_128() -> None:
    amap = np.array([[0.0, 0.5], [1.0, 7.0]], np.float32)
    with Image.open(io.BytesIO(encode_anomaly_map(amap, 2, 2))) as image:
        assert image.mode == "L"
        assert np.asarray(image).tolist() == [[0, 128], [255, 255]]
    with Image.open(io.BytesIO(encode_anomaly_map(amap, 8, 6))) as image:
        assert image.size == (8, 6)


def test_non_finite_scores_are_encoded_as_anomalous_not_hidden() -> None:
    amap = np.array([[np.nan, np.inf], [-np.inf, 0.5]], np.float32)
    levels = decode_anomaly_map(encode_anomaly_map(amap, 2, 2))
    assert levels.tolist() == [[255, 255], [0, THRESHOLD_LEVEL]]
