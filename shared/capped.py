"""A dict bounded by a count of entries, least recently used out first: for state keyed by values
that come off the wire (stations, products), so a producer inventing keys cannot grow memory, and
for small caches."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from shared.errors import ConfigError

K = TypeVar("K")
V = TypeVar("V")


class CappedMap(Generic[K, V]):
    """A dict of at most ``cap`` entries; setting a new key past the cap evicts the least recently
    used one and calls ``on_evict(name)``."""

    def __init__(self, name: str, cap: int, on_evict: Callable[[str], None] | None = None) -> None:
        if cap < 1:
            raise ConfigError(f"{name}: the cap must be at least 1")
        self.name, self.cap = name, cap
        self._on_evict = on_evict or (lambda name: None)
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.cap:
            self._items.popitem(last=False)
            self._on_evict(self.name)

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)
