"""Tests of the ``hops`` command's option parsing (the runs themselves are
in test_commands.py)."""

from __future__ import annotations

import argparse

import pytest

from perf.hops import pause_list_argument


@pytest.mark.parametrize(
    ("text", "pauses"),
    [
        ("0", [0.0]),
        ("0,200us,1ms,5ms", [0.0, 200e-6, 1e-3, 5e-3]),
        (" 0.5ms , 1s ", [0.5e-3, 1.0]),
        ("0.002", [0.002]),
    ],
)
def test_pauses_are_read_in_their_units(text: str, pauses: list[float]) -> None:
    assert pause_list_argument(text) == pytest.approx(pauses)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no pause given"),
        ("1ms,fast", "not a pause: 'fast'"),
        ("2s", "a pause must be 0 to 1 s"),
        ("-1ms", "a pause must be 0 to 1 s"),
    ],
)
def test_a_bad_pause_is_refused_with_its_text(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        pause_list_argument(text)
