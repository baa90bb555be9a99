"""The chaos fuzzer's records (tests/support/fuzz.py): each kind is something the frames topic
accepts, names its frame in the first header, and says truthfully whether it can get a verdict."""

import numpy as np
import pytest

from services.camera_sim.images import encode_jpeg
from services.camera_sim.truth import FRAME_ID_HEADER
from shared.limits import DEAD_LETTER_MAX_BYTES, KAFKA_MAX_MESSAGE_BYTES, MAX_HEADERS
from tests.support.fuzz import HOSTILE_KINDS, frame_id_of_value, hostile_record
from tests.support.messages import frame


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_each_hostile_kind_fits_the_topic_and_names_its_frame(kind: str) -> None:
    good = frame("chaos-0000007", image=encode_jpeg(np.full((48, 64, 3), 90, np.uint8)))
    record = hostile_record(kind, good, np.random.default_rng(1))
    assert record.headers[0] == (FRAME_ID_HEADER, b"chaos-0000007")
    size = len(record.value or b"") + len(record.key or b"")
    assert size < KAFKA_MAX_MESSAGE_BYTES
    assert record.frame_id == frame_id_of_value(record.value)
    assert record.frame_id in (None, "chaos-0000007")
    if kind == "oversize":
        assert len(record.value or b"") > DEAD_LETTER_MAX_BYTES
    if kind == "many_headers":
        assert len(record.headers) > MAX_HEADERS
    if kind in ("null_header", "null_value"):
        assert any(v is None for _, v in record.headers) or record.value is None
