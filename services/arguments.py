"""Value types for the ``lineguard`` commands' options, shared by every service's ``cli.py``.

argparse calls them on the option's text; an ``ArgumentTypeError`` becomes argparse's usage error
(exit 2) naming the option, before any command starts.
"""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """A whole number of at least 1 (sizes, counts, threads)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """A whole number of at least 0 (milliseconds, where 0 means none)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def positive_float(text: str) -> float:
    """A number above 0 (rates)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def probability(text: str) -> float:
    """A number from 0 to 1 (rates, shares)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value
