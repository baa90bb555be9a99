"""The bridge's fixed-size de-duplication window behaves as a first-in-first-out set of its last
``capacity`` digests (checked against a plain ordered dict), and its memory does not grow."""

from __future__ import annotations

import tracemalloc
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.plc_bridge.dedup import DigestWindow, digest


def _reference_add(window: OrderedDict[bytes, None], capacity: int, key: bytes) -> tuple[bool, bool]:
    if key in window:
        return False, False
    evicted = len(window) == capacity
    if evicted:
        window.popitem(last=False)
    window[key] = None
    return True, evicted


# Few distinct keys, and keys whose first 8 bytes (the home bucket) often collide, so that probe
# runs, wrap-around and backward-shift deletion are all exercised.
_keys = st.builds(
    lambda home, rest: home.to_bytes(8, "little") + rest.to_bytes(8, "little"),
    st.integers(0, 40),
    st.integers(0, 3),
)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 12), keys=st.lists(_keys, max_size=200))
def test_the_window_is_a_fifo_set_of_its_last_capacity_keys(capacity: int, keys: list[bytes]) -> None:
    window = DigestWindow(capacity)
    reference: OrderedDict[bytes, None] = OrderedDict()
    for key in keys:
        assert window.add(key) == _reference_add(reference, capacity, key)
        assert len(window) == len(reference)
    for key in set(keys):
        assert (key in window) == (key in reference)


def test_a_station_and_frame_id_pair_is_seen_once() -> None:
    window = DigestWindow(3)
    assert window.add(digest("st-1", "f-1")) == (True, False)
    assert window.add(digest("st-1", "f-1")) == (False, False)
    assert window.add(digest("st-2", "f-1")) == (True, False)  # another station, another pair
    window.add(digest("st-1", "f-2"))
    assert window.add(digest("st-1", "f-3")) == (True, True)  # the oldest, (st-1, f-1), made room
    assert digest("st-1", "f-1") not in window


def test_memory_is_taken_at_start_and_does_not_grow() -> None:
    window = DigestWindow(10_000)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(30_000):
            window.add(digest("st-1", f"frame-{i}"))
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(window) == 10_000
    assert after - before < 64 << 10  # nothing per digest (a dict would take ~2 MB here)


def test_a_digest_must_be_16_bytes() -> None:
    with pytest.raises(ValueError):
        DigestWindow(4).add(b"short")
