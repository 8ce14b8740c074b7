"""Tests of perf.scale's arithmetic: relative throughput and data tenths."""

from __future__ import annotations

import pytest

from perf.harness import TimelinePoint
from perf.scale import relative, tenths


def test_relative_divides_by_the_first_point() -> None:
    assert relative([200.0, 100.0, 300.0]) == [1.0, 0.5, 1.5]
    assert relative([0.0, 5.0]) == [0.0, 0.0]
    assert relative([]) == []


def test_tenths_is_flat_when_the_rate_is_constant() -> None:
    # 100 MB/s for 10 s in 0.25 s intervals: 1 GB.
    timeline = [TimelinePoint(0.25 * (i + 1), 0.0, 100e6) for i in range(40)]
    by_tenth = tenths(timeline, 1_000_000_000)
    assert len(by_tenth) == 10
    assert by_tenth == pytest.approx([100.0] * 10, rel=1e-6)


def test_tenths_shows_a_slowdown_in_the_second_half() -> None:
    timeline = [TimelinePoint(0.25 * (i + 1), 0.0, 100e6) for i in range(20)]
    timeline += [TimelinePoint(5.0 + 0.25 * (i + 1), 0.0, 50e6) for i in range(40)]
    by_tenth = tenths(timeline, 1_000_000_000)
    assert by_tenth[0] == pytest.approx(100.0, rel=1e-6)
    assert by_tenth[-1] == pytest.approx(50.0, rel=1e-6)
