"""Tests of perf.scale's arithmetic: relative throughput and data tenths."""

from __future__ import annotations

from typing import Any

import pytest

from perf.harness import TimelinePoint
from perf.report import Measurement, RunResult
from perf.scale import _add_series, flatness, relative, tenths


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


def test_tenths_splits_an_interval_that_spans_several_tenths() -> None:
    # Two 1 s intervals: 800 MB then 200 MB. The first holds eight tenths.
    timeline = [TimelinePoint(1.0, 0.0, 800e6), TimelinePoint(2.0, 0.0, 200e6)]
    by_tenth = tenths(timeline, 1_000_000_000)
    assert by_tenth == pytest.approx([800.0] * 8 + [200.0] * 2, rel=1e-6)


def test_flatness_fails_when_a_middle_tenth_drops_beyond_the_tolerance() -> None:
    dipped = [100.0, 100.0, 70.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0]
    assert flatness(dipped, 0.25) == (0.7, False)
    assert flatness(dipped, 0.3) == (0.7, True)
    # Fewer than ten tenths measured is never flat.
    assert flatness([100.0] * 9, 0.25) == (1.0, False)


def test_add_series_records_points_table_and_relative_summary() -> None:
    points = [
        Measurement(
            f"ringbus.scale-sizes-{size}",
            "ringbus",
            "produce",
            1000,
            mb * 10**6,
            1.0,
            record_bytes=size,
            params={"point": size},
        )
        for size, mb in ((100, 200), (1000, 100))
    ]
    result = RunResult()
    summary: dict[str, Any] = {}

    _add_series(result, summary, "sizes", "record sizes", "bytes", points)

    assert result.measurements == points
    assert summary == {"sizes": [1.0, 0.5]}
    assert result.text[0].splitlines()[:2] == [
        "record sizes:",
        "| bytes | records/s | MB/s | MB/s vs first |",
    ]
    assert "| 1,000 | 1,000 | 100.0 | 0.50 |" in result.text[0]
