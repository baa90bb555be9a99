"""The option value types every ``lineguard`` command shares."""

import argparse

import pytest

from services.arguments import non_negative_int, positive_float, positive_int, probability


def test_positive_int_takes_whole_numbers_from_one() -> None:
    assert positive_int("1") == 1 and positive_int("224") == 224
    for text in ("0", "-3"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(text)
    with pytest.raises(ValueError):  # argparse reports it as an invalid value
        positive_int("1.5")


def test_probability_takes_numbers_from_zero_to_one() -> None:
    assert probability("0") == 0.0 and probability("1") == 1.0 and probability("0.25") == 0.25
    for text in ("-0.1", "1.01"):
        with pytest.raises(argparse.ArgumentTypeError):
            probability(text)


def test_non_negative_int_and_positive_float() -> None:
    assert non_negative_int("0") == 0 and non_negative_int("250") == 250
    assert positive_float("0.5") == 0.5
    with pytest.raises(argparse.ArgumentTypeError):
        non_negative_int("-1")
    for text in ("0", "-2.5", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float(text)
