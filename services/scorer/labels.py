"""Metric label values that come off the wire (station ids, hinted product classes), made safe.

A Prometheus label value becomes a time series; a producer that sends a new station id with every
frame would grow the scorer (and Prometheus) without bound. So a value must be 1-64 characters of
``[A-Za-z0-9._:-]`` (else it is counted as ``invalid``), and each label keeps at most ``cap`` distinct
values (later ones are counted as ``other``); each replacement is counted by ``on_capped``.
"""

from __future__ import annotations

from collections.abc import Callable

INVALID = "invalid"
OTHER = "other"
MAX_LABEL_CHARS = 64
_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")


def is_valid_label(value: str) -> bool:
    return 0 < len(value) <= MAX_LABEL_CHARS and set(value) <= _ALLOWED


class LabelValues:
    """The value to use for label ``name``: the wire value if valid and among the first ``cap``."""

    def __init__(self, name: str, cap: int, on_capped: Callable[[str], None] | None = None) -> None:
        self.name, self.cap = name, cap
        self._seen: set[str] = set()
        self._on_capped = on_capped or (lambda name: None)

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if not is_valid_label(value):
            self._on_capped(self.name)
            return INVALID
        if len(self._seen) >= self.cap:
            self._on_capped(self.name)
            return OTHER
        self._seen.add(value)
        return value
