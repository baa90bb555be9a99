"""The capped map: at most ``cap`` entries, the least recently used out first, each eviction told."""

from __future__ import annotations

import pytest

from shared.capped import CappedMap
from shared.errors import ConfigError


def test_the_least_recently_used_key_goes_first_and_each_eviction_is_told() -> None:
    evicted: list[str] = []
    held: CappedMap[str, int] = CappedMap("stations", 2, evicted.append)
    held["a"], held["b"] = 1, 2
    assert held.get("a") == 1  # "a" is now the most recently used
    held["c"] = 3
    assert (held.get("b"), held.get("a"), held.get("c"), len(held)) == (None, 1, 3, 2)
    assert evicted == ["stations"]
    assert held.pop("a") == 1 and held.pop("a") is None and len(held) == 1


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="stations"):
        CappedMap("stations", 0)
